//! The daemon as `app` builds it, with the fake Docker: containers' roles served, prefetched
//! before their first request, and ignored (as in Lyft) when a mapping file is configured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use crate::clock::ManualClock;
use crate::config::Config;
use crate::containers::fake::{FakeRuntime, info};
use crate::creds::fake::FakeSts;
use crate::identity::ConnInfo;
use crate::imds::service::Imds;

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

fn build(env: &[(&str, &str)], docker: &FakeRuntime) -> (Arc<Imds>, Arc<FakeSts>) {
    let mut env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert("DEFAULT_ACCOUNT_ID".into(), "123456789012".into());
    env.insert("METADATA_URL".into(), "http://127.0.0.1:9".into());
    // These tests are about wiring, not the STS budget: calls are not held up by the cap.
    env.entry("STS_MAX_CALLS_PER_SECOND".into())
        .or_insert_with(|| "10000".into());
    let config = Config::load(["metadataproxy"], &env).unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let sts = FakeSts::new(&clock, Duration::ZERO);
    let peers = crate::app::Peers {
        sts: sts.clone(),
        clock: Arc::new(clock),
        cgroups: None,
        docker: Some(Arc::new(docker.clone())),
        containerd: None,
    };
    let imds = crate::app::build(&config, peers).unwrap().imds;
    (imds, sts)
}

async fn get(imds: &Imds, ip: &str, path: &str) -> (StatusCode, String) {
    let conn = ConnInfo::new(
        SocketAddr::new(ip.parse().unwrap(), 40000),
        "172.17.0.1:45001".parse().unwrap(),
        None,
    );
    let req = Request::builder().uri(path).body(()).unwrap();
    let resp = imds.handle(&req, &conn).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn containers_are_served_their_roles_from_prefetched_credentials() {
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=role-a"]));
    let (imds, sts) = build(&[], &docker);
    settle().await;
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        1,
        "prefetched at start-up"
    );
    docker.start(info("b", "172.17.0.3", &["IAM_ROLE=role-b"]));
    settle().await;
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        2,
        "prefetched on the start event"
    );

    assert_eq!(
        get(&imds, "172.17.0.2", CREDS).await,
        (StatusCode::OK, "role-a".into())
    );
    let (status, body) = get(&imds, "172.17.0.3", &format!("{CREDS}role-b")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"Code\": \"Success\""), "{body}");
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        2,
        "first requests made no STS call"
    );
    assert_eq!(
        get(&imds, "172.17.0.3", &format!("{CREDS}role-a")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&imds, "10.1.1.1", CREDS).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_a_mapping_file_containers_are_not_looked_up_by_address() {
    let dir = tempfile_dir();
    let path = dir.join("map.json");
    std::fs::write(&path, r#"{"10.0.0.2": "mapped"}"#).unwrap();
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=role-a"]));
    let (imds, sts) = build(
        &[("ROLE_MAPPING_FILE", &path.display().to_string())],
        &docker,
    );
    settle().await;
    assert_eq!(
        get(&imds, "10.0.0.2", CREDS).await,
        (StatusCode::OK, "mapped".into())
    );
    assert_eq!(
        get(&imds, "172.17.0.2", CREDS).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        1,
        "only the mapping's role was prefetched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-docker-wiring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
