//! Readiness: is the eBPF redirect in force, is the container index synchronised with Docker, does
//! STS answer. Each check is reported on its own line; `/readyz` is 503 unless all pass.
//!
//! STS is judged by the outcome of the daemon's own last call to AWS (any operation). Only when
//! nothing was called for [`STS_FRESH_FOR`] does a check start one `sts:GetCallerIdentity` probe
//! in the background (it needs no permission), so STS is asked at most once a minute whatever
//! polls `/readyz`, and never when real traffic already tells. A check never waits on STS.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::containers::ContainerIndex;
use crate::creds::StsError;
use crate::creds::{StsHealth, StsOutcome};
use futures_util::future::BoxFuture;

/// How long the outcome of a call to AWS is taken as the state of STS.
pub const STS_FRESH_FOR: Duration = Duration::from_secs(60);

/// A cheap call that tells whether STS answers (`sts:GetCallerIdentity` for the real client).
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// Calls STS once.
    fn probe(&self) -> BoxFuture<'_, Result<(), StsError>>;
}

impl Probe for crate::creds::aws::AwsSts {
    fn probe(&self) -> BoxFuture<'_, Result<(), StsError>> {
        Box::pin(async move { self.caller_identity().await.map(drop) })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `ebpf`, `docker` or `sts`.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// The state of the eBPF redirect, fixed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EbpfState {
    /// Attached and pinned (`EBPF=required`, or `auto` and usable).
    Attached,
    /// `EBPF=off`: IP-only mode by configuration.
    Off,
    /// `EBPF=auto` and eBPF was unusable: IP-only mode.
    FellBack,
}

/// Judges STS from the last call's outcome, probing when it is stale.
#[derive(Debug)]
pub struct StsCheck {
    health: Arc<StsHealth>,
    probe: Arc<dyn Probe>,
    probing: Arc<AtomicBool>,
}

impl StsCheck {
    /// A check reading `health` and calling `probe` when it is stale.
    pub fn new(health: Arc<StsHealth>, probe: Arc<dyn Probe>) -> Self {
        Self {
            health,
            probe,
            probing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts one probe in the background unless one is running.
    pub fn spawn_probe(&self) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (health, probe, probing) = (
            Arc::clone(&self.health),
            Arc::clone(&self.probe),
            Arc::clone(&self.probing),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let result = probe.probe().await;
            health.record(
                "sts:GetCallerIdentity",
                result.as_ref().err(),
                started.elapsed(),
            );
            if let Err(e) = &result {
                tracing::warn!(error = %e, "STS readiness probe failed");
            }
            probing.store(false, Ordering::Release);
        });
    }

    /// The check, from the last outcome; starts a probe when there is none or it is stale.
    pub fn check(&self) -> Check {
        let last = self.health.last();
        if last
            .as_ref()
            .is_none_or(|o| o.at.elapsed() >= STS_FRESH_FOR)
        {
            self.spawn_probe();
        }
        sts_check(last.as_ref(), Instant::now())
    }
}

/// What the last outcome says about STS at `now`.
pub fn sts_check(last: Option<&StsOutcome>, now: Instant) -> Check {
    let Some(o) = last else {
        return Check::new("sts", false, "not called yet; a probe is running");
    };
    let ago = humantime::format_duration(Duration::from_secs(
        now.saturating_duration_since(o.at).as_secs(),
    ));
    match &o.error {
        None => Check::new("sts", true, format!("{} succeeded {ago} ago", o.operation)),
        Some(e) if o.reachable() => Check::new(
            "sts",
            true,
            format!(
                "{} answered {ago} ago (refused: {})",
                o.operation,
                e.code.as_deref().unwrap_or("no code")
            ),
        ),
        Some(e) => Check::new("sts", false, format!("{ago} ago: {e}")),
    }
}

/// The docker check: the index follows Docker's events (or Docker is off: `DOCKER_URL=off`).
pub fn docker_check(index: Option<&ContainerIndex>, endpoint: Option<&Endpoint>) -> Check {
    let Some(docker_url) = endpoint else {
        return Check::new("docker", true, "not used (DOCKER_URL=off)");
    };
    match index {
        Some(i) if i.is_live() => Check::new(
            "docker",
            true,
            format!(
                "container index synchronised ({} running{})",
                i.len(),
                left_out("Docker", i.unreadable())
            ),
        ),
        Some(i) => Check::new(
            "docker",
            false,
            format!(
                "container index not synchronised: Docker at {docker_url} unreachable ({} containers known from before)",
                i.len()
            ),
        ),
        None => Check::new("docker", false, format!("DOCKER_URL {docker_url} unusable")),
    }
}

/// What the readiness line adds for running containers left out: they get no credentials.
fn left_out(runtime: &str, unreadable: usize) -> String {
    if unreadable == 0 {
        String::new()
    } else {
        format!(
            "; {unreadable} more that {runtime} cannot describe are left out and get no credentials"
        )
    }
}

/// The containerd check, when containerd is followed: its index follows containerd's events.
pub fn containerd_check(index: &ContainerIndex, address: &str) -> Check {
    if index.is_live() {
        Check::new(
            "containerd",
            true,
            format!(
                "container index synchronised ({} running{})",
                index.len(),
                left_out("containerd", index.unreadable())
            ),
        )
    } else {
        Check::new(
            "containerd",
            false,
            format!(
                "container index not synchronised: containerd at {address} unreachable ({} containers known from before)",
                index.len()
            ),
        )
    }
}

/// The eBPF check.
pub fn ebpf_check(state: &EbpfState) -> Check {
    match state {
        EbpfState::Attached => Check::new(
            "ebpf",
            true,
            "redirect of 169.254.169.254:80 attached and pinned",
        ),
        EbpfState::Off => Check::new("ebpf", true, "not used (EBPF=off: IP-only mode)"),
        EbpfState::FellBack => Check::new(
            "ebpf",
            true,
            "not attached (EBPF=auto: eBPF unusable, IP-only mode; see the start-up log)",
        ),
    }
}

/// Everything `/readyz` looks at.
#[derive(Debug)]
pub struct Readiness {
    /// The eBPF redirect.
    pub ebpf: EbpfState,
    /// The container index.
    pub docker: Option<Arc<ContainerIndex>>,
    /// `DOCKER_URL` (`None`: `off`).
    pub docker_url: Option<Endpoint>,
    /// The containerd index and `CONTAINERD_ADDRESS`, when containerd is followed.
    pub containerd: Option<(Arc<ContainerIndex>, String)>,
    /// STS.
    pub sts: StsCheck,
}

impl Readiness {
    /// Every check, in order.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = vec![
            ebpf_check(&self.ebpf),
            docker_check(self.docker.as_deref(), self.docker_url.as_ref()),
        ];
        if let Some((index, address)) = &self.containerd {
            checks.push(containerd_check(index, address));
        }
        checks.push(self.sts.check());
        checks
    }
}

/// The `/readyz` body: one `name: ok|FAIL (detail)` line per check; whether all pass.
pub fn report(checks: &[Check]) -> (bool, String) {
    let mut body = String::new();
    for c in checks {
        let verdict = if c.ok { "ok" } else { "FAIL" };
        let _ = writeln!(body, "{}: {verdict} ({})", c.name, c.detail);
    }
    (checks.iter().all(|c| c.ok), body)
}

#[cfg(test)]
#[path = "ready_tests.rs"]
mod tests;
