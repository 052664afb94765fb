//! Issue 15 item 4: the daemon's real Docker client against a fake Engine API with N synthetic
//! containers (10 … 10,000), identified by source address (`EBPF=off`): memory with N indexed,
//! the cost of identification as N grows (same-run ratios), and full resynchronisation time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};

use super::control::{Bare, Control};
use super::fake_docker::{FakeDocker, container_ip, role};
use super::{DaemonLog, Size, cache_misses, start_daemon};
use crate::bench::client::Conn;
use crate::bench::moto::Moto;
use crate::bench::servers::{Programs, Server, loopback};
use crate::bench::stats::Sample;
use crate::process::free_port;

/// What the daemon logs once the index equals the runtime's listing.
pub const SYNCED: &str = "container index synchronised";
/// Closed-loop workers in each load run.
pub const WORKERS: usize = 16;

/// One daemon following a fake dockerd with `containers` containers.
#[derive(Debug, Default, Clone)]
pub struct Fleet {
    pub containers: usize,
    /// Daemon spawn → its log line saying the index is synchronised (with every container).
    pub start_to_synced: Duration,
    /// AssumeRole calls moto answered while it started and prefetched.
    pub sts_at_start: usize,
    /// RSS once synchronised and prefetched, before any request; after the load runs.
    pub rss_synced_kib: u64,
    pub rss_after_load_kib: u64,
    /// The largest fleet only: RSS after its resyncs and `Size::settle` more.
    pub rss_settled_kib: Option<u64>,
    /// Daemon CPU time from spawn until synchronised and prefetched.
    pub cpu_start_s: f64,
    /// One sample per round.
    pub rounds: Vec<Sample>,
    /// Credential requests that waited for STS during the load (0 expected).
    pub cache_misses: u64,
    /// AssumeRole calls during the load runs (0 expected).
    pub sts_during_load: usize,
    /// Lines the daemon logged from its start to the end of the load runs.
    pub log_lines_at_start: usize,
    /// Each forced resynchronisation.
    pub resyncs: Vec<Resync>,
}

/// One resynchronisation after the event stream ended.
#[derive(Debug, Default, Clone)]
pub struct Resync {
    /// Event stream ended → the log line saying the index is synchronised again.
    pub took: Duration,
    /// `/containers/{id}/json` calls the daemon made for it.
    pub inspects: u64,
    /// Daemon CPU time and log lines from the end of the stream to the line.
    pub cpu_s: f64,
    pub log_lines: usize,
}

/// Ends the fake's event stream and waits for the daemon to be synchronised again.
async fn resync(fake: &FakeDocker, server: &Server) -> Result<Resync> {
    let log = DaemonLog::of(server);
    let lines = || std::fs::read_to_string(server.proc.log_path()).map_or(0, |t| t.lines().count());
    let seen = log.count(SYNCED);
    let (_, inspects) = fake.calls();
    let (cpu, before) = (server.proc.cpu_seconds(), lines());
    let ended = SystemTime::now();
    ensure!(fake.end_event_streams() > 0, "no event stream to end");
    let again = log
        .wait_for(SYNCED, seen + 1, Duration::from_secs(300))
        .await?;
    let r = Resync {
        took: again.at.duration_since(ended).unwrap_or_default(),
        inspects: fake.calls().1 - inspects,
        cpu_s: server.proc.cpu_seconds() - cpu,
        log_lines: lines().saturating_sub(before),
    };
    println!(
        "  {} containers: event stream ended → synchronised again in {:?} ({} inspections, {:.2} s CPU, {} log lines)",
        fake.containers(),
        r.took,
        r.inspects,
        r.cpu_s,
        r.log_lines
    );
    Ok(r)
}

/// Runs item 4 with every container count of `size`; `roles` already exist in moto.
pub async fn run(programs: &Programs, moto: &Moto, size: &Size) -> Result<(Vec<Fleet>, Control)> {
    let mut running = Vec::new();
    for &n in size.synthetic {
        running.push(start_fleet(programs, moto, size, n).await?);
    }
    let bare = Bare::start(programs)?;
    let mut control = Control {
        small: size.synthetic.iter().copied().min().unwrap_or(1),
        large: size.synthetic.iter().copied().max().unwrap_or(1),
        rounds: Vec::new(),
    };

    for round in 0..size.rounds {
        for k in 0..running.len() {
            let i = (k + round) % running.len();
            let (fleet, _, server, admin) = &mut running[i];
            let misses = cache_misses(*admin).await?;
            let sts = moto.assume_role_count().await?;
            let sample = load(server.addr, fleet.containers, size.roles, size.duration).await?;
            fleet.cache_misses += cache_misses(*admin).await? - misses;
            fleet.sts_during_load += moto.assume_role_count().await? - sts;
            println!(
                "  round {}: {:>6} containers {:>8.0} req/s  p50 {:>6.0} us  p99 {:>7.0} us{}",
                round + 1,
                fleet.containers,
                sample.rps,
                sample.p50_us,
                sample.p99_us,
                sample
                    .first_error
                    .as_ref()
                    .map(|e| format!("  ({} errors; first: {e})", sample.errors))
                    .unwrap_or_default()
            );
            ensure!(
                sample.errors == 0,
                "{} of the requests to the daemon with {} containers failed: {}",
                sample.errors,
                fleet.containers,
                sample.first_error.as_deref().unwrap_or_default()
            );
            fleet.rounds.push(sample);
        }
        let pools = (control.small, control.large);
        control
            .rounds
            .push(bare.round(pools, size.roles, size.duration, round).await?);
    }

    let largest = size.synthetic.iter().copied().max().unwrap_or(0);
    for (fleet, fake, server, _) in &mut running {
        fleet.rss_after_load_kib = server.proc.rss_kib()?;
        fleet.log_lines_at_start =
            std::fs::read_to_string(server.proc.log_path()).map_or(0, |t| t.lines().count());
        if fleet.containers == largest {
            for _ in 0..size.reconnects {
                fleet.resyncs.push(resync(fake, server).await?);
            }
            // The liveness check lists every container every 10 s (DOCKER_PING_INTERVAL).
            tokio::time::sleep(size.settle).await;
            fleet.rss_settled_kib = Some(server.proc.rss_kib()?);
        }
        server.proc.check_running()?;
    }
    Ok((
        running.into_iter().map(|(fleet, ..)| fleet).collect(),
        control,
    ))
}

/// Starts a fake dockerd with `n` containers and a daemon following it; waits until it is
/// synchronised and has prefetched every role.
async fn start_fleet(
    programs: &Programs,
    moto: &Moto,
    size: &Size,
    n: usize,
) -> Result<(Fleet, FakeDocker, Server, SocketAddr)> {
    let fake = FakeDocker::start(
        &programs.dir.join(format!("fake-docker-{n}.sock")),
        n,
        size.roles,
    )?;
    let before = moto.assume_role_count().await?;
    let spawned = SystemTime::now();
    let admin = loopback(free_port()?);
    let server = start_daemon(
        programs,
        &format!("ours-synthetic-{n}"),
        loopback(free_port()?),
        &[
            ("DOCKER_URL", fake.url()),
            ("ADMIN_LISTEN", admin.to_string()),
        ],
    )?;
    let log = DaemonLog::of(&server);
    let synced = log
        .wait_for(SYNCED, 1, Duration::from_secs(300))
        .await
        .with_context(|| format!("the daemon following {n} synthetic containers"))?;
    ensure!(
        synced.line.contains(&format!("containers={n}")),
        "the daemon synchronised with the wrong count: {}",
        synced.line
    );
    let roles = n.min(size.roles);
    moto.wait_assume_roles(before + roles, Duration::from_secs(120))
        .await
        .context("waiting for the prefetch of every role")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fleet = Fleet {
        containers: n,
        start_to_synced: synced.at.duration_since(spawned).unwrap_or_default(),
        sts_at_start: moto.assume_role_count().await? - before,
        rss_synced_kib: server.proc.rss_kib()?,
        cpu_start_s: server.proc.cpu_seconds(),
        ..Fleet::default()
    };
    println!(
        "  {n} containers: synchronised {:?} after spawn, RSS {} KiB, {} AssumeRole calls (Docker API calls: {:?})",
        fleet.start_to_synced,
        fleet.rss_synced_kib,
        fleet.sts_at_start,
        fake.calls()
    );
    Ok((fleet, fake, server, admin))
}

/// New connection per request, each from a random container's address asking for its role's
/// credentials, [`WORKERS`] at a time for `duration`.
pub(super) async fn load(
    addr: SocketAddr,
    containers: usize,
    roles: usize,
    duration: Duration,
) -> Result<Sample> {
    let start = Instant::now();
    let deadline = start + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let errors = Arc::clone(&errors);
            tokio::spawn(async move {
                let mut rng = Lcg(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
                let (mut latencies, mut first_error) = (Vec::new(), None);
                while Instant::now() < deadline {
                    let i = rng.below(containers);
                    let path = format!(
                        "/latest/meta-data/iam/security-credentials/{}",
                        role(i, roles)
                    );
                    let t0 = Instant::now();
                    match once(container_ip(i), addr, &path).await {
                        Ok(()) => latencies
                            .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX)),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                (latencies, first_error)
            })
        })
        .collect();
    let (mut all, mut first) = (Vec::new(), None);
    for w in workers {
        let (latencies, error) = w.await?;
        all.extend(latencies);
        first = first.or(error);
    }
    let mut sample = Sample::from_latencies(all, start.elapsed());
    sample.errors = errors.load(Ordering::Relaxed);
    sample.first_error = first;
    Ok(sample)
}

async fn once(source: std::net::Ipv4Addr, addr: SocketAddr, path: &str) -> Result<()> {
    let mut conn = Conn::open(Some(source), addr).await?;
    // A bound source address makes the kernel pick the port at bind(), searching past this
    // address's TIME_WAITs: 10 addresses would pay more for it than 10,000.
    conn.reset_on_close()?;
    let resp = conn.send("GET", path, &[], b"").await?;
    ensure!(
        resp.status == 200 && resp.text().contains("AccessKeyId"),
        "{source}: GET {path} -> {} {}",
        resp.status,
        resp.text()
    );
    Ok(())
}

/// A small deterministic generator (Knuth's MMIX LCG), enough to pick containers at random.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let high = usize::try_from(self.0 >> 33).unwrap_or(0);
        high % n.max(1)
    }
}
