//! The admin service without a socket: its three paths, 404 for everything else (the IAM routes
//! included), 405 for other methods, and `/readyz` built from the checks.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;

use super::ready::{EbpfState, Probe, StsCheck};
use super::{Admin, Readiness};
use crate::clock::ManualClock;
use crate::containers::ContainerIndex;
use crate::creds::StsHealth;
use crate::creds::fake::FakeSts;
use crate::creds::{CredentialCache, CredentialCacheConfig, StsError};
use futures_util::future::BoxFuture;

#[derive(Debug)]
struct NeverProbe;

impl Probe for NeverProbe {
    fn probe(&self) -> BoxFuture<'_, Result<(), StsError>> {
        Box::pin(std::future::pending())
    }
}

fn admin(index: &Arc<ContainerIndex>) -> Admin {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let cache = CredentialCache::new(
        FakeSts::new(&clock, Duration::ZERO),
        Arc::new(clock),
        CredentialCacheConfig {
            capacity: NonZeroUsize::MIN,
            threshold: Duration::from_secs(900),
            session_duration: Duration::from_secs(3600),
            idle_after: Duration::from_secs(7200),
            max_calls_per_second: std::num::NonZeroU32::new(10_000).unwrap(),
        },
    );
    let health = Arc::new(StsHealth::default());
    health.record("sts:AssumeRole", None, Duration::from_millis(5));
    Admin {
        readiness: Readiness {
            ebpf: EbpfState::Off,
            docker: Some(Arc::clone(index)),
            docker_url: Some(crate::config::Endpoint::Unix("/d.sock".into())),
            containerd: None,
            sts: StsCheck::new(health, Arc::new(NeverProbe)),
        },
        cache,
        occupancy: None,
    }
}

async fn call(admin: &Admin, method: Method, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap_or_default();
    let resp = admin.handle(&req).await;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes);
    (
        status,
        String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
    )
}

#[tokio::test]
async fn three_paths_and_nothing_else() {
    let index = ContainerIndex::new();
    let admin = admin(&index);
    assert_eq!(
        call(&admin, Method::GET, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    let (status, body) = call(&admin, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("metadataproxy_docker_containers 0"), "{body}");
    for path in [
        "/",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/web",
        "/latest/api/token",
        "/healthz/",
    ] {
        assert_eq!(
            call(&admin, Method::GET, path).await,
            (StatusCode::NOT_FOUND, "Not Found\n".into()),
            "{path}"
        );
    }
    // A query is not part of the path (Kubernetes may add `?verbose`).
    let (status, body) = call(&admin, Method::GET, "/readyz?verbose").await;
    assert!(body.starts_with("ebpf: ok"), "{status} {body}");
    assert_eq!(
        call(&admin, Method::DELETE, "/metrics").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn readyz_follows_the_container_index() {
    let index = ContainerIndex::new();
    let admin = admin(&index);
    let (status, body) = call(&admin, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("\ndocker: FAIL (container index not synchronised"),
        "{body}"
    );
    index.set_live(true);
    let (status, body) = call(&admin, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "ebpf: ok (not used (EBPF=off: IP-only mode))\n\
         docker: ok (container index synchronised (0 running))\n\
         sts: ok (sts:AssumeRole succeeded 0s ago)\n"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Arc::new(admin(&ContainerIndex::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(super::serve(listener, admin, async move {
        let _ = stopped.await;
    }));
    let mut held = Vec::new();
    for _ in 0..super::MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Let the accept loop take them all.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut got)).await;
    // Closed at once, with a best-effort 503 first (or a reset when the request came too late).
    assert!(
        matches!(read, Ok(Ok(_) | Err(_))),
        "one too many is closed at once: {read:?}"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 503"),
        "one too many gets 503 or nothing: {got:?}"
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = stop.send(());
    server.await.unwrap();
}
