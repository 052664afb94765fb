//! Issue 15 item 3: real containers started in a burst on a private dockerd (the test harness's
//! [`DockerD`]), spread over a few roles, our daemon following that dockerd and identifying
//! callers by address (`EBPF=off`, listening on the bridge's gateway).
//!
//! Each container waits for a file in a shared folder, then asks for its credentials once
//! (busybox `wget`) and writes what it got back there; so every first request comes after the
//! burst, and the daemon's `credential_cache_misses` counter says whether any waited for STS.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use metadataproxy_tests::{DockerD, IMAGE};

use super::fake_docker::role;
use super::synthetic::SYNCED;
use super::{DaemonLog, Size, cache_misses, start_daemon};
use crate::bench::moto::Moto;
use crate::bench::servers::{Programs, loopback};
use crate::process::free_port;

/// Parallel `docker run` invocations in the burst.
pub const PARALLEL_RUNS: usize = 16;
const DOCKER: &str = "/usr/bin/docker";
/// What the daemon logs when a container enters the index, and when STS answered.
const INDEXED: &str = "container indexed";
const OBTAINED: &str = "credentials obtained";

/// The burst's figures, or why it could not run here.
#[derive(Debug)]
pub enum Burst {
    NotMeasured(String),
    Measured(BurstRun),
}

/// What one burst measured.
#[derive(Debug, Default)]
pub struct BurstRun {
    pub containers: usize,
    pub roles: usize,
    /// How long each `docker run -d` took (invocation → it returned), ms.
    pub docker_run_ms: Vec<f64>,
    /// Per container: `docker run` invoked → the daemon had it indexed and its role's
    /// credentials cached (the later of its two log lines), ms.
    pub ready_ms: Vec<f64>,
    /// First `docker run` invoked → every container ready.
    pub window: Duration,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// Daemon CPU time over the window.
    pub cpu_s: f64,
    /// First requests answered with credentials, and the failures.
    pub first_ok: usize,
    pub first_failed: Vec<String>,
    /// Credential requests that waited for STS among the first requests (0 expected).
    pub misses: u64,
    /// AssumeRole calls from the daemon's start to the end of the first requests, the distinct
    /// (role, external id, session name) among them, and the most calls for one of those.
    pub sts_calls: usize,
    pub distinct: usize,
    pub max_per_key: usize,
}

/// Runs the burst, or says why this machine cannot.
pub async fn run(programs: &Programs, moto: &Moto, size: &Size) -> Result<Burst> {
    if let Some(why) = impossible() {
        println!("  not measured: {why}");
        return Ok(Burst::NotMeasured(why));
    }
    let started = tokio::task::spawn_blocking(|| std::panic::catch_unwind(DockerD::start)).await?;
    let docker = match started {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(Burst::NotMeasured("dockerd cannot run here".into())),
        Err(panic) => {
            let why = crate::process::panic_message(&*panic);
            return Ok(Burst::NotMeasured(format!("dockerd did not start: {why}")));
        }
    };
    let docker = Arc::new(docker);
    let result = measure(programs, moto, size, &docker).await;
    // Removes the containers, stops dockerd and its bridge (blocking).
    tokio::task::spawn_blocking(move || drop(docker)).await?;
    result.map(Burst::Measured)
}

/// Why the burst cannot run on this machine at all.
fn impossible() -> Option<String> {
    let euid = metadataproxy_tests::effective_uid();
    if euid != "0" {
        return Some(format!(
            "a private dockerd needs root (effective uid {euid})"
        ));
    }
    ["/usr/sbin/dockerd", DOCKER, "/bin/busybox"]
        .into_iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| {
            format!("{p} is missing (`cargo xtask setup` installs docker.io and busybox-static)")
        })
}

async fn measure(
    programs: &Programs,
    moto: &Moto,
    size: &Size,
    docker: &DockerD,
) -> Result<BurstRun> {
    let shared = programs.dir.join("burst-shared");
    let _ = std::fs::remove_dir_all(&shared);
    std::fs::create_dir_all(shared.join("out"))?;
    let addr = std::net::SocketAddr::from((docker.gateway(), free_port()?));
    let admin = loopback(free_port()?);
    let sts_before = moto.assumed_roles().await?.len();
    let server = start_daemon(
        programs,
        "ours-burst",
        addr,
        &[
            ("DOCKER_URL", docker.url()),
            ("ADMIN_LISTEN", admin.to_string()),
            // `credentials obtained` is a debug line of the cache.
            (
                "LOG_LEVEL",
                "info,metadataproxy::creds::cache=debug".to_owned(),
            ),
        ],
    )?;
    let log = DaemonLog::of(&server);
    log.wait_for(SYNCED, 1, Duration::from_secs(60)).await?;
    let mut out = BurstRun {
        containers: size.burst,
        roles: size.burst_roles,
        rss_before_kib: server.proc.rss_kib()?,
        ..BurstRun::default()
    };

    // RSS sampled every 20 ms while the burst lasts.
    let peak = Arc::new(AtomicU64::new(out.rss_before_kib));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        let pid = server.proc.pid();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_of(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let cpu0 = server.proc.cpu_seconds();
    let t0 = Instant::now();
    let runs = burst(docker, &shared, addr, size).await?;
    let ids: Vec<String> = runs.iter().map(|r| r.id[..12].to_owned()).collect();
    // Every container indexed and every role's credentials cached.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (indexed, obtained) = loop {
        let indexed = by_field(&log, INDEXED, " id=");
        let obtained = by_field(&log, OBTAINED, " role=");
        let roles_done =
            (0..size.burst_roles).all(|r| obtained.contains_key(&arn(&role(r, usize::MAX))));
        if roles_done && ids.iter().all(|id| indexed.contains_key(id)) {
            break (indexed, obtained);
        }
        ensure!(
            Instant::now() < deadline,
            "after 180 s the daemon had indexed {} of {} containers and cached {} roles",
            ids.iter().filter(|id| indexed.contains_key(*id)).count(),
            ids.len(),
            obtained.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    out.window = t0.elapsed();
    out.cpu_s = server.proc.cpu_seconds() - cpu0;
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    out.rss_peak_kib = peak.load(Ordering::Relaxed);
    for (run, id) in runs.iter().zip(&ids) {
        out.docker_run_ms
            .push(ms(run.returned.duration_since(run.invoked)));
        let cached = obtained[&arn(&run.role)];
        let ready = indexed[id].max(cached);
        out.ready_ms.push(ms(ready.duration_since(run.invoked)));
    }

    // Every container asks once, now.
    let misses = cache_misses(admin).await?;
    first_requests(&shared, &ids, &mut out).await?;
    out.misses = cache_misses(admin).await? - misses;
    out.rss_after_kib = server.proc.rss_kib()?;
    let calls: Vec<_> = moto.assumed_roles().await?.split_off(sts_before);
    let mut per_key: HashMap<_, usize> = HashMap::new();
    for call in &calls {
        *per_key.entry(call.clone()).or_default() += 1;
    }
    out.sts_calls = calls.len();
    out.distinct = per_key.len();
    out.max_per_key = per_key.values().copied().max().unwrap_or(0);
    let mut server = server;
    server.proc.check_running()?;
    Ok(out)
}

/// Tells every container to ask now, and collects what each got.
async fn first_requests(shared: &Path, ids: &[String], out: &mut BurstRun) -> Result<()> {
    std::fs::write(shared.join("now"), b"go")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::fs::read_dir(shared.join("out"))?
            .flatten()
            .filter(|e| e.path().extension().is_none_or(|x| x == "failed"))
            .count();
        if done >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ids {
        let got = std::fs::read_to_string(shared.join("out").join(id)).unwrap_or_default();
        if got.contains("AccessKeyId") {
            out.first_ok += 1;
        } else {
            let err = std::fs::read_to_string(shared.join("out").join(format!("{id}.err")))
                .unwrap_or_else(|_| "no answer within 120 s".into());
            out.first_failed.push(format!("{id}: {}", err.trim()));
        }
    }
    Ok(())
}

fn arn(role: &str) -> String {
    format!("arn:aws:iam::{}:role/{role}", crate::bench::moto::ACCOUNT)
}

fn ms(d: Result<Duration, std::time::SystemTimeError>) -> f64 {
    d.unwrap_or_default().as_secs_f64() * 1000.0
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The first time each value of `field` appears on a line containing `needle`.
fn by_field(log: &DaemonLog, needle: &str, field: &str) -> HashMap<String, SystemTime> {
    let mut first = HashMap::new();
    for line in log.lines(needle) {
        if let Some(at) = line.line.find(field) {
            let value = line.line[at + field.len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned();
            first.entry(value).or_insert(line.at);
        }
    }
    first
}

/// One `docker run -d` of the burst.
#[derive(Debug)]
struct Run {
    id: String,
    role: String,
    invoked: SystemTime,
    returned: SystemTime,
}

/// Starts `size.burst` containers, [`PARALLEL_RUNS`] `docker run -d` at a time.
async fn burst(
    docker: &DockerD,
    shared: &Path,
    addr: std::net::SocketAddr,
    size: &Size,
) -> Result<Vec<Run>> {
    let next = Arc::new(AtomicU64::new(0));
    let total = size.burst as u64;
    let workers: Vec<_> = (0..PARALLEL_RUNS)
        .map(|_| {
            let next = Arc::clone(&next);
            let (url, shared, roles) = (docker.url(), shared.to_path_buf(), size.burst_roles);
            tokio::spawn(async move {
                let mut runs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return anyhow::Ok(runs);
                    }
                    let i = usize::try_from(i)?;
                    let role = role(i, roles);
                    runs.push(run_one(&url, &shared, addr, i, role).await?);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    Ok(all)
}

/// The container's script: wait for `/go/now`, ask once, leave the answer in `/go/out/<id>`.
fn script(addr: std::net::SocketAddr, role: &str) -> String {
    format!(
        "while [ ! -e /go/now ]; do sleep 1; done; h=$(hostname); \
         if wget -q -O /go/out/$h.tmp http://{addr}/latest/meta-data/iam/security-credentials/{role} 2>/go/out/$h.err; \
         then mv /go/out/$h.tmp /go/out/$h; rm -f /go/out/$h.err; else mv /go/out/$h.tmp /go/out/$h.failed; fi; exec sleep 600"
    )
}

async fn run_one(
    url: &str,
    shared: &Path,
    addr: std::net::SocketAddr,
    i: usize,
    role: String,
) -> Result<Run> {
    let invoked = SystemTime::now();
    let out = tokio::process::Command::new(DOCKER)
        .args(["--host", url, "run", "-d", "--name", &format!("scale-{i}")])
        .args(["-e", &format!("IAM_ROLE={role}")])
        .arg("-v")
        .arg(format!("{}:/go", shared.display()))
        .args([IMAGE, "sh", "-c", &script(addr, &role)])
        .env_remove("IAM_ROLE")
        .output()
        .await
        .context("running docker run")?;
    let returned = SystemTime::now();
    ensure!(
        out.status.success(),
        "docker run scale-{i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(id.len() >= 12, "docker run scale-{i} printed no id: {id:?}");
    Ok(Run {
        id,
        role,
        invoked,
        returned,
    })
}
