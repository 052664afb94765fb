//! Readiness from known states: each check's verdict and message, and the report.

use std::time::{Duration, Instant};

use super::*;
use crate::creds::{StsError, StsErrorKind};

fn outcome(ago: Duration, error: Option<StsErrorKind>) -> (StsOutcome, Instant) {
    let now = Instant::now();
    let at = now.checked_sub(ago).unwrap_or(now);
    let error = error.map(|kind| StsError {
        operation: "sts:AssumeRole",
        kind,
        code: (kind == StsErrorKind::Denied).then(|| "AccessDenied".to_owned()),
        message: "no".into(),
    });
    (
        StsOutcome {
            at,
            operation: "sts:AssumeRole",
            error,
        },
        now,
    )
}

#[test]
fn sts_is_ready_when_it_answers_even_with_a_refusal() {
    let (o, now) = outcome(Duration::from_secs(3), None);
    assert_eq!(
        sts_check(Some(&o), now),
        Check::new("sts", true, "sts:AssumeRole succeeded 3s ago")
    );
    let (o, now) = outcome(Duration::from_secs(1), Some(StsErrorKind::Denied));
    let c = sts_check(Some(&o), now);
    assert!(c.ok, "{c:?}");
    assert_eq!(
        c.detail,
        "sts:AssumeRole answered 1s ago (refused: AccessDenied)"
    );
    let (o, now) = outcome(Duration::ZERO, Some(StsErrorKind::Throttled));
    assert!(sts_check(Some(&o), now).ok);
}

#[test]
fn sts_is_not_ready_when_unreachable_or_without_credentials() {
    for kind in [StsErrorKind::Unavailable, StsErrorKind::NoCredentials] {
        let (o, now) = outcome(Duration::from_secs(2), Some(kind));
        let c = sts_check(Some(&o), now);
        assert!(!c.ok, "{kind:?}: {c:?}");
        assert!(
            c.detail.starts_with("2s ago: sts:AssumeRole failed"),
            "{c:?}"
        );
    }
    assert!(!sts_check(None, Instant::now()).ok);
}

fn sock() -> Endpoint {
    Endpoint::Unix("/d.sock".into())
}

#[test]
fn docker_follows_the_index() {
    let index = ContainerIndex::new();
    let c = docker_check(Some(&index), Some(&sock()));
    assert!(!c.ok);
    assert_eq!(
        c.detail,
        "container index not synchronised: Docker at unix:///d.sock unreachable (0 containers known from before)"
    );
    index.set_live(true);
    assert_eq!(
        docker_check(Some(&index), Some(&sock())),
        Check::new("docker", true, "container index synchronised (0 running)")
    );
    // Containers Docker cannot describe are left out: still ready, and said.
    index.set_unreadable(["a".repeat(64), "b".repeat(64)]);
    assert_eq!(
        docker_check(Some(&index), Some(&sock())),
        Check::new(
            "docker",
            true,
            "container index synchronised (0 running; 2 more that Docker cannot describe are left out and get no credentials)"
        )
    );
    index.set_live(false);
    assert!(!docker_check(Some(&index), Some(&sock())).ok);
}

#[test]
fn report_lists_every_check_and_fails_if_one_fails() {
    let checks = [
        ebpf_check(&EbpfState::Attached),
        Check::new("docker", false, "down"),
    ];
    let (ready, body) = report(&checks);
    assert!(!ready);
    assert_eq!(
        body,
        "ebpf: ok (redirect of 169.254.169.254:80 attached and pinned)\ndocker: FAIL (down)\n"
    );
    assert!(report(&checks[..1]).0);
}

/// A probe that counts its calls and answers as told.
#[derive(Debug, Default)]
struct CountingProbe {
    calls: std::sync::atomic::AtomicUsize,
}

impl Probe for CountingProbe {
    fn probe(&self) -> BoxFuture<'_, Result<(), StsError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn stale_or_missing_outcome_starts_one_probe_and_a_fresh_one_none() {
    let health = Arc::new(StsHealth::default());
    let probe = Arc::new(CountingProbe::default());
    let check = StsCheck::new(Arc::clone(&health), Arc::clone(&probe) as Arc<dyn Probe>);
    let first = check.check();
    assert!(!first.ok, "nothing known yet: {first:?}");
    for _ in 0..50 {
        if health.last().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = check.check();
    assert!(c.ok, "{c:?}");
    assert!(
        c.detail.starts_with("sts:GetCallerIdentity succeeded"),
        "{c:?}"
    );
    for _ in 0..10 {
        let _ = check.check();
    }
    tokio::task::yield_now().await;
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        1,
        "a fresh outcome needs no probe"
    );
}

#[test]
fn docker_off_is_ready_and_containerd_is_checked_when_followed() {
    let c = docker_check(None, None);
    assert!(c.ok, "{c:?}");
    assert!(c.detail.contains("DOCKER_URL=off"), "{c:?}");
    let index = ContainerIndex::default();
    let c = containerd_check(&index, "/run/containerd/containerd.sock");
    assert!(!c.ok, "an index not yet synchronised is not ready: {c:?}");
    assert!(
        c.detail.contains("/run/containerd/containerd.sock"),
        "{c:?}"
    );
    index.set_live(true);
    assert!(containerd_check(&index, "x").ok);
    index.set_unreadable(["c".repeat(64)]);
    let c = containerd_check(&index, "x");
    assert!(c.ok, "{c:?}");
    assert!(
        c.detail.ends_with(
            "; 1 more that containerd cannot describe are left out and get no credentials)"
        ),
        "{c:?}"
    );
}
