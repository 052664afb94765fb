//! One daemon of the eBPF path: `EBPF=required` on its own test cgroup, pinned in its own private
//! bpffs, and the load that goes through its redirect or straight to it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use metadataproxy_privileged_tests::Cgroup;
use metadataproxy_tests::BpfFs;

use super::CONCURRENCY;
use super::inside::Inside;
use crate::bench::client::once;
use crate::bench::loadgen::{self, Load, Pattern};
use crate::bench::proc::Proc;
use crate::bench::servers::{CREDS_PATH, Kind, Programs, ROLE, loopback};
use crate::bench::stats::Sample;
use crate::process::free_port;

/// Settings without which a daemon cannot run this leg (it would attach elsewhere, or not at all).
const REQUIRED: &[&str] = &["EBPF", "EBPF_CGROUPS", "EBPF_PIN_DIR"];

/// A running daemon with its redirect attached to `<root>` and the load's cgroup `<root>/load`.
pub struct Leg {
    // Declaration order is drop order: the daemon stops before its cgroups and pins go.
    pub daemon: Proc,
    /// Where it listens (the direct leg's destination).
    pub addr: SocketAddr,
    /// Redirected and named in the mapping file by `cgroup:` path.
    pub load: Cgroup,
    _root: Cgroup,
    _bpffs: BpfFs,
    /// Settings of ours this daemon does not know, left out of its environment.
    pub left_out: Vec<String>,
    /// Where its redirect sends callers, as it logged it.
    pub target: Option<String>,
}

impl Leg {
    /// Starts `kind` (ours or the baseline) with its programs on `/<root>`; `tag` names its files.
    /// The mapping gives the role to `<root>/load` by cgroup path and to 127.0.0.1 by address.
    pub async fn start(
        programs: &Programs,
        kind: Kind,
        tag: &str,
        root: &str,
        body: &Path,
    ) -> Result<Self> {
        let bpffs = BpfFs::mount();
        let root = Cgroup::new(root);
        let load = root.child("load");
        let mapping = programs.dir.join(format!("mapping-{tag}.json"));
        std::fs::write(
            &mapping,
            serde_json::json!({
                "127.0.0.1": ROLE,
                format!("cgroup:{}", load.rel): ROLE,
            })
            .to_string(),
        )?;
        let addr = loopback(free_port()?);
        let mut cmd = programs.command(kind, addr, &mapping, body)?;
        cmd.env("EBPF", "required")
            .env("EBPF_CGROUPS", &root.rel)
            .env("EBPF_PIN_DIR", bpffs.pin_dir())
            .env("EBPF_ON_EXIT", "detach")
            // The direct leg connects straight to the daemon: opted in to address identification.
            .env("EBPF_DIRECT_CALLERS", "127.0.0.1");
        let left_out = programs.restrict(kind, &mut cmd);
        if let Some(missing) = REQUIRED.iter().find(|s| left_out.iter().any(|l| l == *s)) {
            bail!("it does not know the setting {missing}, which this leg needs");
        }
        let mut daemon = Proc::spawn(tag, &mut cmd, &programs.dir.join(format!("{tag}.log")))?;
        daemon.wait_listening(addr, Duration::from_secs(30))?;
        // The socket is bound before the programs are attached; "listening" is logged after.
        wait_logged(&mut daemon, "listening").await?;
        // Where this leg's callers (in the daemon's network namespace) are sent: loopback when
        // the daemon logs it does that, else its target.
        let target = daemon
            .log_field("own_netns_target")
            .and_then(|t| Some(t.strip_prefix("Some(")?.strip_suffix(')')?.to_owned()))
            .or_else(|| daemon.log_field("target"));
        Ok(Self {
            daemon,
            addr,
            load,
            _root: root,
            _bpffs: bpffs,
            left_out,
            target,
        })
    }

    /// One credentials request from inside the load cgroup to `imds`; the document served. The
    /// daemon must have identified the caller by its cgroup path (its audit line may be written
    /// just after the answer: waited for).
    pub async fn redirected_credentials(&mut self, imds: SocketAddr) -> Result<Vec<u8>> {
        let doc = {
            let _inside = Inside::enter(&self.load)?;
            credentials(imds).await.context("redirected request")?
        };
        wait_logged(&mut self.daemon, "cgroup_path")
            .await
            .context("the redirected caller was not identified by its cgroup path")?;
        Ok(doc)
    }

    /// New connections to `imds` from inside the load cgroup, for `duration`.
    pub async fn redirected_load(&self, imds: SocketAddr, duration: Duration) -> Result<Sample> {
        let _inside = Inside::enter(&self.load)?;
        run_load(imds, duration).await
    }
}

/// One credentials request on a new connection; the document served.
pub async fn credentials(addr: SocketAddr) -> Result<Vec<u8>> {
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

/// New connections to `addr`, [`CONCURRENCY`] at a time, for `duration`. Failed requests are
/// counted in the sample (the report shows them); a run where none succeeded is an error.
pub async fn run_load(addr: SocketAddr, duration: Duration) -> Result<Sample> {
    let sample = loadgen::run(&Load {
        addr,
        path: CREDS_PATH.to_owned(),
        pattern: Pattern::NewConnection,
        concurrency: CONCURRENCY,
        duration,
        max_ops: u64::MAX,
    })
    .await?;
    if sample.ops == 0 {
        bail!(
            "{} of {} requests to {addr} failed: {}",
            sample.errors,
            sample.errors + sample.ops,
            sample.first_error.as_deref().unwrap_or("no answer")
        );
    }
    Ok(sample)
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
