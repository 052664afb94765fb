//! Malformed and hostile requests over a real socket: each gets a precise status, and the daemon
//! keeps serving.

use metadataproxy_tests::{CREDS_PATH, Daemon, SRC_2, get, moto_and_daemon, raw_http};
use serde_json::json;

#[tokio::test]
async fn bad_requests_get_precise_statuses_and_the_daemon_keeps_serving() {
    let (_moto, _mapping, daemon) =
        moto_and_daemon(&["role-a"], &json!({"127.0.0.2": "role-a"})).await;
    let addr = daemon.addr();

    let long_path = format!("/latest/meta-data/{}", "a".repeat(2000));
    let cases: Vec<(String, Vec<u16>, &str)> = vec![
        (format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n"), vec![414], "path over 1024 bytes"),
        (format!("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000)), vec![431], "header over 16 KiB"),
        (
            format!("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..300).fold(String::new(), |acc, i| acc + "X-H" + &i.to_string() + ": v\r\n")),
            vec![431],
            "too many headers",
        ),
        ("GET /latest/meta-data/iam/../iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![400], "dot segments"),
        ("GET /latest/meta-data/%2e%2e/iam/info HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![400], "encoded dot segments"),
        ("GET /latest/meta-data/iam%2finfo HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![400], "encoded slash"),
        ("GET /latest//meta-data/iam/info HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![400], "empty segment"),
        ("GET /latest/meta-data/iam\\info HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![400], "backslash"),
        ("DELETE /latest/meta-data/iam/info HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![405], "odd method"),
        ("GET /latest/api/token HTTP/1.1\r\nHost: x\r\n\r\n".into(), vec![405], "GET of the token route"),
        ("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 99999999999999999999\r\nContent-Length: 0\r\n\r\n".into(), vec![400], "huge TTL"),
        ("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: \u{7f}bad\r\n\r\n".into(), vec![400, 401], "control byte in token"),
        ("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: nope\r\n\r\n".into(), vec![401], "unknown token"),
        ("BLAH\r\n\r\n".into(), vec![400], "not HTTP"),
    ];
    for (request, expected, what) in &cases {
        let response = raw_http(SRC_2, addr, request.as_bytes()).await;
        assert!(
            expected.contains(&response.status),
            "{what}: expected {expected:?}, got {response:?}"
        );
        assert!(
            !response.body.contains("ASIA"),
            "{what}: credentials in an error: {response:?}"
        );
    }
    let ok = get(SRC_2, addr, CREDS_PATH, &[]).await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, "role-a"),
        "still serving after the bad requests: {ok:?}"
    );
}

#[tokio::test]
async fn http10_requests_are_answered() {
    let daemon = Daemon::builder().env("MOCK_API", "true").start().await;
    let addr = daemon.addr();
    let response = raw_http(
        SRC_2,
        addr,
        b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "i-mockedid"),
        "{response:?}"
    );
}
