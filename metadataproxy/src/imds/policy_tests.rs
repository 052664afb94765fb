//! The role policy on the request path: a refused role gets 403 on every IAM route and the
//! container-credentials route, and no STS call; an allowed one is served; the policy in force
//! is the file's latest good version.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, StatusCode};

use super::{Fixture, call, fixture};

const MAPPING: &str = r#"{"10.0.0.2": "web", "10.0.0.3": "web-admin", "10.0.0.4": "batch"}"#;

const POLICY: &str = r#"{"version": 1, "rules": [
    {"name": "operators", "match": {"assigned_by": ["mapping_file"]}, "allow": ["web*"]},
    {"name": "no-admin", "match": {}, "deny": ["*-admin"]}
]}"#;

fn with_policy(policy: &str) -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, policy).unwrap();
    let f = fixture(
        &[
            ("ROLE_POLICY_FILE", path.to_str().unwrap()),
            ("ROLE_MAPPING_RELOAD_INTERVAL", "1"),
        ],
        Some(MAPPING),
    );
    (f, dir)
}

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

#[tokio::test]
async fn allowed_roles_are_served_and_refused_ones_get_403_without_an_sts_call() {
    let (f, _dir) = with_policy(POLICY);
    // Prefetch at start: only the allowed role is fetched.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.sts.calls.load(Ordering::SeqCst), 1);

    let (status, body) = call(&f, "10.0.0.2", Method::GET, &format!("{CREDS}web"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"AccessKeyId\""), "{body}");

    // Denied by a rule, and not allowed by any: both refused on every IAM route.
    for (ip, role) in [("10.0.0.3", "web-admin"), ("10.0.0.4", "batch")] {
        for path in [
            format!("{CREDS}{role}"),
            CREDS.to_owned(),
            "/latest/meta-data/iam/".to_owned(),
            "/latest/meta-data/iam/info".to_owned(),
        ] {
            let (status, body) = call(&f, ip, Method::GET, &path, &[]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{ip} {path}: {body}");
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(doc["Code"], "AccessDenied", "{body}");
            assert!(
                doc["Message"]
                    .as_str()
                    .unwrap()
                    .starts_with("The role policy does not allow this caller the role it asks for"),
                "{body}"
            );
            assert!(!body.contains(role), "the refusal names no role: {body}");
        }
    }
    assert_eq!(
        f.sts.calls.load(Ordering::SeqCst),
        1,
        "no STS call for a refused role"
    );
}

#[tokio::test]
async fn without_a_policy_every_role_is_served() {
    let f = fixture(&[], Some(MAPPING));
    let (status, _) = call(
        &f,
        "10.0.0.3",
        Method::GET,
        &format!("{CREDS}web-admin"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_reloaded_policy_is_in_force_and_a_broken_one_keeps_the_last_good() {
    let (f, dir) = with_policy(POLICY);
    let path = dir.path().join("policy.json");
    let batch = format!("{CREDS}batch");
    assert_eq!(
        call(&f, "10.0.0.4", Method::GET, &batch, &[]).await.0,
        StatusCode::FORBIDDEN
    );
    // A broken version (rename, as a ConfigMap swap does): the last good policy stays.
    let tmp = dir.path().join("new.json");
    std::fs::write(&tmp, "{\"version\": 1, \"rules\": [").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        call(&f, "10.0.0.4", Method::GET, &batch, &[]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, &format!("{CREDS}web"), &[])
            .await
            .0,
        StatusCode::OK
    );
    // A good version allowing batch.
    std::fs::write(
        &tmp,
        r#"{"version": 1, "rules": [{"match": {}, "allow": ["batch"]}]}"#,
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call(&f, "10.0.0.4", Method::GET, &batch, &[]).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reloaded: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And `web` is no longer allowed.
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, &format!("{CREDS}web"), &[])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

fn pattern() -> impl proptest::strategy::Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "*",
        "web*",
        "*admin*",
        "batch",
        "?eb",
        "arn:aws:iam::123456789012:role/b*",
    ])
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever the policy, a role it refuses a caller is never assumed for that caller: every
    /// caller of a refused role gets 403 and STS never sees the role unless some caller may have
    /// it; every allowed caller is served.
    #[test]
    fn a_refused_role_is_never_assumed(
        allow in proptest::collection::vec(pattern(), 1..3),
        deny in proptest::collection::vec(pattern(), 0..2),
    ) {
        let policy = serde_json::json!({"version": 1, "rules": [
            {"match": {}, "allow": allow, "deny": deny},
            {"match": {"assigned_by": ["default_role"]}, "deny": ["*"]}
        ]});
        let parsed = crate::policy::parse(&policy.to_string()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let entered = runtime.enter();
        let (f, _dir) = with_policy(&policy.to_string());
        drop(entered);
        runtime.block_on(async {
            for (ip, role) in [("10.0.0.2", "web"), ("10.0.0.3", "web-admin"), ("10.0.0.4", "batch")] {
                let text = format!("arn:aws:iam::123456789012:role/{role}");
                let arn = crate::role::RoleArn::parse(&text).unwrap();
                let subject = crate::policy::Subject {
                    assigned_by: crate::policy::AssignedBy::MappingFile,
                    workload: None,
                    cgroup: None,
                };
                let allowed = parsed.decide(&subject, &arn, &text).is_allowed();
                let (status, body) = call(&f, ip, Method::GET, &format!("{CREDS}{role}"), &[]).await;
                let want = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
                assert_eq!(status, want, "{policy} {role}: {body}");
            }
            // Prefetches included: let them finish before looking at what STS saw.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let assumed = f.sts.assumed.lock().unwrap().clone();
        for arn_text in &assumed {
            let arn = crate::role::RoleArn::parse(arn_text).unwrap();
            let subject = crate::policy::Subject {
                assigned_by: crate::policy::AssignedBy::MappingFile,
                workload: None,
                cgroup: None,
            };
            proptest::prop_assert!(
                parsed.decide(&subject, &arn, arn_text).is_allowed(),
                "{} assumed although refused by {}", arn_text, policy
            );
        }
    }
}
