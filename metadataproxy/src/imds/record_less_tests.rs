//! With the eBPF redirect attached, connections without a kernel record (callers that reached
//! the daemon's own address) are refused the routes that need an identity, unless
//! `EBPF_DIRECT_CALLERS` names their address; redirected callers and IP-only mode are unchanged.

use http::{Method, StatusCode};

use super::{call, call_on, conn, fixture, redirected_fixture};
use crate::identity::ConnInfo;

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
const TTL: (&str, &str) = ("x-aws-ec2-metadata-token-ttl-seconds", "60");

/// A request: method, path, headers.
type Call = (Method, &'static str, Vec<(&'static str, &'static str)>);

/// Every route that depends on who calls, with the method it is called with.
fn identity_routes() -> Vec<Call> {
    vec![
        (Method::PUT, "/latest/api/token", vec![TTL]),
        (Method::GET, CREDS, vec![]),
        (
            Method::GET,
            "/latest/meta-data/iam/security-credentials/role-d",
            vec![],
        ),
        (Method::GET, "/latest/meta-data/iam/info", vec![]),
        (Method::GET, "/latest/meta-data/iam/", vec![]),
        (Method::GET, "/2016-09-02/meta-data/iam/other", vec![]),
    ]
}

fn redirected(ip: &str, cgroup_id: u64) -> ConnInfo {
    let c = conn(ip);
    let kernel = Some(crate::caller::KernelRecord {
        cgroup_id,
        pid: 4242,
        netns_cookie: 1,
    });
    ConnInfo::new(c.peer, c.local, kernel)
}

#[tokio::test]
async fn a_caller_that_skipped_the_redirect_is_refused_what_needs_an_identity() {
    let f = redirected_fixture(
        &[
            ("DEFAULT_ROLE", "role-d"),
            ("ECS_ENDPOINT", "true"),
            ("MOCK_API", "true"),
        ],
        Some(r#"{"127.0.0.2": "role-m"}"#),
    );
    for (method, path, headers) in identity_routes() {
        for ip in ["127.0.0.2", "10.0.0.9", "::1"] {
            let (status, body) = call(&f, ip, method.clone(), path, &headers).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} from {ip}: {body}"
            );
            assert!(body.contains("169.254.169.254"), "{body}");
        }
    }
    let (status, body) = call(
        &f,
        "127.0.0.2",
        Method::GET,
        "/v1/credentials",
        &[("authorization", "x")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"code\":\"AccessDenied\""), "{body}");
    // What does not depend on the caller is still served.
    let (status, body) = call(
        &f,
        "127.0.0.2",
        Method::GET,
        "/latest/meta-data/instance-id",
        &[],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "i-mockedid"));
}

#[tokio::test]
async fn redirected_callers_keep_every_source_mapping_file_ip_keys_included() {
    let f = redirected_fixture(
        &[("DEFAULT_ROLE", "role-d")],
        Some(r#"{"127.0.0.2": "role-m"}"#),
    );
    // A redirected caller's source address is known: the mapping file's IP keys apply.
    assert_eq!(
        call_on(&f, &redirected("127.0.0.2", 7), Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-m".into())
    );
    assert_eq!(
        call_on(&f, &redirected("10.0.0.9", 8), Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-d".into())
    );
    let (status, _) = call_on(
        &f,
        &redirected("10.0.0.9", 8),
        Method::PUT,
        "/latest/api/token",
        &[TTL],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn ebpf_direct_callers_opts_named_peers_in_to_address_identity() {
    let f = redirected_fixture(
        &[
            ("DEFAULT_ROLE", "role-d"),
            (
                "EBPF_DIRECT_CALLERS",
                "127.0.0.2, 10.1.0.0/16,::ffff:192.0.2.7",
            ),
        ],
        Some(r#"{"127.0.0.2": "role-m"}"#),
    );
    assert_eq!(
        call(&f, "127.0.0.2", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-m".into())
    );
    assert_eq!(
        call(&f, "::ffff:10.1.200.3", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-d".into()),
        "an IPv4-mapped peer in a named network"
    );
    assert_eq!(
        call(&f, "192.0.2.7", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-d".into())
    );
    for ip in ["127.0.0.3", "10.2.0.1"] {
        assert_eq!(
            call(&f, ip, Method::GET, CREDS, &[]).await.0,
            StatusCode::FORBIDDEN,
            "{ip} is not named"
        );
    }
    let (status, _) = call(&f, "127.0.0.2", Method::PUT, "/latest/api/token", &[TTL]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_the_redirect_every_caller_is_identified_by_address() {
    let f = fixture(
        &[("DEFAULT_ROLE", "role-d")],
        Some(r#"{"127.0.0.2": "role-m"}"#),
    );
    assert_eq!(
        call(&f, "127.0.0.2", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-m".into())
    );
    assert_eq!(
        call(&f, "10.0.0.9", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-d".into())
    );
}
