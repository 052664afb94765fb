//! The exposition of known events.

use std::time::Duration;

use http::StatusCode;

use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn known_events_give_exact_samples() {
    let m = Metrics::new();
    m.request(Route::IamCredentials, 200, Duration::from_millis(2));
    m.request(Route::IamCredentials, 200, Duration::from_micros(50));
    m.request(Route::Token, 405, Duration::from_micros(50));
    m.sts_call("sts:AssumeRole", None, Duration::from_millis(30));
    m.sts_call("sts:AssumeRole", Some("denied"), Duration::from_millis(30));
    m.sts_call(
        "sts:AssumeRole",
        Some("throttled"),
        Duration::from_millis(3),
    );
    m.sts_queued.set(4);
    m.sts_delayed
        .get_or_create(&PriorityLabels { priority: "caller" })
        .inc();
    m.set_state(&State {
        cache_entries: 3,
        docker: Some(IndexState {
            containers: 7,
            synchronised: true,
            unreadable: 2,
        }),
        ebpf: Some(MapOccupancy {
            v4: 2,
            v6: 0,
            capacity: 65_536,
        }),
    });
    let text = m.encode();
    for want in [
        r#"metadataproxy_requests_total{route="iam_credentials",status="200"} 2"#,
        r#"metadataproxy_requests_total{route="token",status="405"} 1"#,
        r#"metadataproxy_request_duration_seconds_count{route="iam_credentials"} 2"#,
        r#"metadataproxy_request_duration_seconds_bucket{le="0.0001",route="iam_credentials"} 1"#,
        r#"metadataproxy_sts_calls_total{operation="sts:AssumeRole"} 3"#,
        r#"metadataproxy_sts_errors_total{operation="sts:AssumeRole",kind="throttled"} 1"#,
        "metadataproxy_sts_throttled_total 1",
        "metadataproxy_sts_calls_queued 4",
        r#"metadataproxy_sts_calls_delayed_total{priority="caller"} 1"#,
        r#"metadataproxy_sts_calls_delayed_total{priority="background"} 0"#,
        r#"metadataproxy_sts_errors_total{operation="sts:AssumeRole",kind="denied"} 1"#,
        "metadataproxy_credential_cache_entries 3",
        "metadataproxy_docker_containers 7",
        "metadataproxy_docker_synchronised 1",
        "metadataproxy_docker_containers_unreadable 2",
        r#"metadataproxy_ebpf_connection_entries{map="conn4"} 2"#,
        "metadataproxy_ebpf_connection_capacity 65536",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no line {want:?} in:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        line(&text, "metadataproxy_credential_cache_hits_total"),
        Some("metadataproxy_credential_cache_hits_total 0")
    );
}

#[test]
fn global_request_records_status_and_route() {
    let before = global().encode();
    request(Route::Metadata, StatusCode::IM_A_TEAPOT, Duration::ZERO);
    let after = global().encode();
    let want = r#"metadataproxy_requests_total{route="metadata",status="418"} 1"#;
    assert!(!before.contains(want) && after.contains(want), "{after}");
}
