//! Issue 15 at scale: real containers started in a burst on a private dockerd (`burst`), and
//! 10,000 synthetic containers behind a fake Docker Engine API (`synthetic`), each followed by our
//! daemon through its real Docker client and identified by source address (`EBPF=off`).

pub mod burst;
mod control;
mod fake_docker;
mod report;
pub mod synthetic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

pub use self::burst::Burst;
pub use self::synthetic::Fleet;
use super::machine;
use super::many::cache_misses;
use super::moto::Moto;
use super::proc::Proc;
use super::servers::{Kind, Programs, Server};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Synthetic container counts, one daemon each, measured side by side.
    pub synthetic: &'static [usize],
    /// Distinct roles over the synthetic containers.
    pub roles: usize,
    /// Load rounds (each daemon once per round) and the length of each run.
    pub rounds: usize,
    pub duration: Duration,
    /// Forced reconnections of the largest synthetic daemon.
    pub reconnects: usize,
    /// Idle time after them before the largest fleet's RSS is read again.
    pub settle: Duration,
    /// Real containers started in the burst, and their distinct roles.
    pub burst: usize,
    pub burst_roles: usize,
}

pub const FULL: Size = Size {
    synthetic: &[10, 1_000, 10_000],
    roles: 50,
    rounds: 3,
    duration: Duration::from_secs(5),
    reconnects: 3,
    settle: Duration::from_secs(25),
    burst: 200,
    burst_roles: 50,
};

/// The smoke version: the same steps, small.
pub const QUICK: Size = Size {
    synthetic: &[10, 100, 1_000],
    roles: 10,
    rounds: 1,
    duration: Duration::from_secs(1),
    reconnects: 1,
    settle: Duration::ZERO,
    burst: 6,
    burst_roles: 3,
};

/// Everything the scale scenarios measured.
#[derive(Debug)]
pub struct Scale {
    pub size: Size,
    pub load_at_start: String,
    pub load_at_end: String,
    pub fleets: Vec<Fleet>,
    /// The bare server under the same load from the smallest and largest address pools.
    pub control: control::Control,
    pub burst: Burst,
}

/// Runs both scale scenarios against moto (which gets their roles).
pub async fn run(programs: &Programs, moto: &Moto, size: Size) -> Result<Scale> {
    let load_at_start = machine::load_average();
    let roles: Vec<String> = (0..size.roles.max(size.burst_roles))
        .map(|i| fake_docker::role(i, usize::MAX))
        .collect();
    moto.create_roles(&roles).await?;
    crate::step(&format!(
        "scale: {:?} synthetic containers over {} roles behind a fake Docker API",
        size.synthetic, size.roles
    ));
    let (fleets, control) = synthetic::run(programs, moto, &size).await?;
    crate::step(&format!(
        "scale: {} real containers over {} roles started in a burst on a private dockerd",
        size.burst, size.burst_roles
    ));
    let burst = burst::run(programs, moto, &size).await?;
    Ok(Scale {
        size,
        load_at_start,
        load_at_end: machine::load_average(),
        fleets,
        control,
        burst,
    })
}

/// Our daemon on `addr`, callers identified as containers by address (no mapping file: with one,
/// the daemon identifies by address through it alone), `env` on top of the bench's settings.
fn start_daemon(
    programs: &Programs,
    tag: &str,
    addr: SocketAddr,
    env: &[(&str, String)],
) -> Result<Server> {
    let unused = programs.dir.join("scale-unused");
    let mut cmd = programs.command(Kind::Ours, addr, &unused, &unused)?;
    cmd.env_remove("ROLE_MAPPING_FILE")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let log = programs.dir.join(format!("{tag}.log"));
    let mut proc = Proc::spawn(tag, &mut cmd, &log)?;
    proc.wait_listening(addr, Duration::from_secs(60))?;
    Ok(Server {
        kind: Kind::Ours,
        addr,
        proc,
        left_out: Vec::new(),
    })
}

/// A daemon's log, read for its timestamped lines.
#[derive(Debug, Clone)]
struct DaemonLog {
    path: PathBuf,
}

/// One log line and the time it carries.
#[derive(Debug, Clone)]
struct LogLine {
    at: SystemTime,
    line: String,
}

impl DaemonLog {
    fn of(server: &Server) -> Self {
        Self {
            path: server.proc.log_path().to_path_buf(),
        }
    }

    /// Every line containing `needle`, with its timestamp.
    fn lines(&self, needle: &str) -> Vec<LogLine> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                let stamp = l.split_whitespace().next()?;
                Some(LogLine {
                    at: humantime::parse_rfc3339(stamp).ok()?,
                    line: l.to_owned(),
                })
            })
            .collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines(needle).len()
    }

    /// The `nth` (from 1) line containing `needle`, waiting up to `timeout` for it.
    async fn wait_for(&self, needle: &str, nth: usize, timeout: Duration) -> Result<LogLine> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines(needle).into_iter().nth(nth - 1) {
                return Ok(line);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "no {nth}th {needle:?} line in {} within {timeout:?}",
                    self.path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The median of durations (zero when empty).
fn median(ds: &[Duration]) -> Duration {
    Duration::from_secs_f64(super::stats::median(ds.iter().map(Duration::as_secs_f64)))
}
