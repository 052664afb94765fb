//! The eBPF redirect path: new connections from a redirected test cgroup to `169.254.169.254`
//! versus the same load straight to the daemon, in alternating rounds.
//!
//! A second instance of our daemon runs with `EBPF=required`, its programs attached to a test
//! cgroup `/mp-bench-<pid>` and pinned in a private bpffs. The mapping file gives the same role to
//! the child cgroup `load` (by `cgroup:` path: the kernel-attested identification) and to
//! 127.0.0.1 (by address), so both paths serve the same cached credentials. For a redirected round
//! this whole process moves into `load` (its load generator connects to `169.254.169.254:80`, the
//! kernel sends the connection to the daemon), and moves back for the direct round (to 127.0.0.1
//! and the daemon's port). `169.254.169.254` is made local first, with a stand-in behind it, only
//! through [`MetadataAddress`] (the machine-wide lock): a missed redirect reaches the stand-in,
//! which fails the bench, and never leaves the machine.
//!
//! Without root, BTF or cgroup v2 the row is reported as not measured, with the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use metadataproxy_privileged_tests::Cgroup;
use metadataproxy_tests::{BpfFs, METADATA_IP, MetadataAddress};

use super::client::once;
use super::loadgen::{self, Load, Pattern};
use super::proc::Proc;
use super::servers::{CREDS_PATH, Kind, Programs, ROLE, loopback};
use super::stats::{Sample, median};
use crate::process::free_port;

/// Concurrent workers, each opening a new connection per request (as the issue asks).
pub const CONCURRENCY: usize = 16;

/// The eBPF path's result.
#[derive(Debug)]
pub enum EbpfPath {
    /// This machine cannot run the redirect; the reason.
    NotMeasured(String),
    /// Rounds of the same load through the redirect and straight to the daemon.
    Measured(Redirect),
}

/// Each round's samples: through the redirect, and straight to the daemon.
#[derive(Debug)]
pub struct Redirect {
    pub rounds: Vec<(Sample, Sample)>,
    pub duration: Duration,
}

impl Redirect {
    /// Median over rounds of redirected / direct throughput (each pair from the same round).
    pub fn ratio(&self) -> f64 {
        median(self.rounds.iter().map(|(r, d)| r.rps / d.rps))
    }

    /// Median req/s, p50 and p99 (µs) of the redirected (`true`) or direct samples.
    pub fn medians(&self, redirected: bool) -> (f64, f64, f64) {
        let pick = |s: &(Sample, Sample)| {
            if redirected { s.0.clone() } else { s.1.clone() }
        };
        let all: Vec<Sample> = self.rounds.iter().map(pick).collect();
        (
            median(all.iter().map(|s| s.rps)),
            median(all.iter().map(|s| s.p50_us)),
            median(all.iter().map(|s| s.p99_us)),
        )
    }
}

/// Why this machine cannot run the redirect, or `None` when it can.
pub fn why_not() -> Option<String> {
    let euid = metadataproxy_tests::effective_uid();
    if euid != "0" {
        return Some(format!(
            "not root (effective uid {euid}): loading eBPF programs, test cgroups and making \
             169.254.169.254 local need root"
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): the redirect needs \
             CONFIG_DEBUG_INFO_BTF"
                .to_owned(),
        );
    }
    if cgroup2_mount().is_none() {
        return Some(
            "no cgroup v2 mount in /proc/self/mountinfo: the redirect attaches to a cgroup v2"
                .to_owned(),
        );
    }
    None
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
}

/// Measures the redirect: `rounds` rounds of `duration` each way, alternating which goes first.
pub async fn measure(
    programs: &Programs,
    body: &Path,
    rounds: usize,
    duration: Duration,
) -> Result<EbpfPath> {
    if let Some(why) = why_not() {
        println!("eBPF path NOT MEASURED: {why}");
        return Ok(EbpfPath::NotMeasured(why));
    }
    println!("waiting for the machine-wide lock on 169.254.169.254 (other tests may hold it)");
    // Declared first, dropped last: the address stays local until every caller is gone.
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let root = Cgroup::new(&format!("/mp-bench-{}", std::process::id()));
    let load_cg = root.child("load");
    let mapping = programs.dir.join("mapping-ebpf.json");
    std::fs::write(
        &mapping,
        serde_json::json!({
            "127.0.0.1": ROLE,
            format!("cgroup:{}", load_cg.rel): ROLE,
        })
        .to_string(),
    )?;
    let addr = loopback(free_port()?);
    let mut cmd = programs.command(Kind::Ours, addr, &mapping, body);
    cmd.env("EBPF", "required")
        .env("EBPF_CGROUPS", &root.rel)
        .env("EBPF_PIN_DIR", bpffs.pin_dir())
        .env("EBPF_ON_EXIT", "detach")
        // The direct leg connects straight to the daemon: opted in to address identification.
        .env("EBPF_DIRECT_CALLERS", "127.0.0.1");
    let mut daemon = Proc::spawn("ours-ebpf", &mut cmd, &programs.dir.join("ours-ebpf.log"))?;
    daemon.wait_listening(addr, Duration::from_secs(30))?;
    // The socket is bound before the programs are attached; "listening" is logged after.
    wait_logged(&mut daemon, "listening").await?;
    let imds = SocketAddr::from((METADATA_IP, 80));

    let direct_doc = credentials(addr).await.context("direct request")?;
    let redirected_doc = {
        let _inside = Inside::enter(&load_cg)?;
        credentials(imds).await.context("redirected request")?
    };
    ensure_unseen(&metadata)?;
    ensure!(
        direct_doc == redirected_doc,
        "the redirected caller got other credentials than the direct one"
    );
    ensure!(
        daemon.log_lines_containing("cgroup_path") > 0,
        "the redirected caller was not identified by its cgroup path; daemon log:\n{}",
        daemon.log_tail()
    );
    println!(
        "redirect verified: 169.254.169.254:80 from cgroup {} -> 169.254.170.45:{} (the default \
         target), identified by cgroup path",
        load_cg.rel,
        addr.port()
    );

    let mut samples = Vec::new();
    for round in 0..rounds {
        let mut pair = (Sample::default(), Sample::default());
        for redirected in [round % 2 == 0, round % 2 != 0] {
            let sample = if redirected {
                let _inside = Inside::enter(&load_cg)?;
                run_load(imds, duration).await?
            } else {
                run_load(addr, duration).await?
            };
            ensure_unseen(&metadata)?;
            println!(
                "  round {}: {:<11} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
                round + 1,
                if redirected { "redirected" } else { "direct" },
                sample.rps,
                sample.p50_us,
                sample.p99_us,
            );
            if redirected {
                pair.0 = sample;
            } else {
                pair.1 = sample;
            }
        }
        samples.push(pair);
    }
    daemon.check_running()?;
    // Stop the daemon before its cgroups, pins and the address go (reverse declaration order).
    drop(daemon);
    drop(load_cg);
    drop(root);
    drop(bpffs);
    drop(metadata);
    Ok(EbpfPath::Measured(Redirect {
        rounds: samples,
        duration,
    }))
}

/// One credentials request on a new connection; the document served.
async fn credentials(addr: SocketAddr) -> Result<Vec<u8>> {
    let resp = once(None, addr, "GET", CREDS_PATH, &[], b"").await?;
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    ensure!(
        resp.status == 200
            && doc["AccessKeyId"]
                .as_str()
                .is_some_and(|k| k.starts_with("ASIA")),
        "no credentials from {addr}: {} {}",
        resp.status,
        resp.text()
    );
    Ok(resp.body)
}

async fn run_load(addr: SocketAddr, duration: Duration) -> Result<Sample> {
    let sample = loadgen::run(&Load {
        addr,
        path: CREDS_PATH.to_owned(),
        pattern: Pattern::NewConnection,
        concurrency: CONCURRENCY,
        duration,
        max_ops: u64::MAX,
    })
    .await?;
    if sample.errors > 0 || sample.ops == 0 {
        bail!(
            "{} of {} requests to {addr} failed: {}",
            sample.errors,
            sample.errors + sample.ops,
            sample.first_error.as_deref().unwrap_or("no answer")
        );
    }
    Ok(sample)
}

/// Fails if any request reached the stand-in "real IMDS" (a connection was not redirected).
fn ensure_unseen(metadata: &MetadataAddress) -> Result<()> {
    let seen = metadata.standin.requests().len();
    ensure!(
        seen == 0,
        "{seen} request(s) reached the stand-in on 169.254.169.254: the redirect missed them"
    );
    Ok(())
}

async fn wait_logged(daemon: &mut Proc, needle: &str) -> Result<()> {
    for _ in 0..300 {
        daemon.check_running()?;
        if daemon.log_lines_containing(needle) > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "the daemon never logged {needle:?}; its log:\n{}",
        daemon.log_tail()
    )
}

/// This whole process inside a cgroup (every thread moves: cgroup v2 moves thread groups); moved
/// back to where it was when dropped.
struct Inside {
    back: PathBuf,
}

impl Inside {
    fn enter(cgroup: &Cgroup) -> Result<Self> {
        let mount = cgroup2_mount().context("cgroup2 mount vanished")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let back = mount.join(own.trim_start_matches('/'));
        move_self(&cgroup.dir)?;
        Ok(Self { back })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.back) {
            eprintln!("xtask: cannot move back to {}: {e:#}", self.back.display());
        }
    }
}

fn move_self(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("writing {}", procs.display()))
}
