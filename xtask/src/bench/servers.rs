//! The servers under test: our daemon, Lyft's proxy, the bare hyper server and (with `--baseline`)
//! an earlier build of our daemon, each on a loopback port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::baseline::Baseline;
use super::moto::ACCOUNT;
use super::proc::Proc;
use super::{lyft, path_var};
use crate::process::free_port;

/// The role mapped to 127.0.0.1 for the load runs.
pub const ROLE: &str = "bench-role";
/// Where each server serves the caller's credentials.
pub const CREDS_PATH: &str = "/latest/meta-data/iam/security-credentials/bench-role";
/// A mocked (non-IAM) route.
pub const MOCKED_PATH: &str = "/latest/meta-data/instance-id";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This project's daemon (release build).
    Ours,
    /// Lyft's metadataproxy 2.2.0 under gunicorn, 2 gevent workers.
    Lyft,
    /// A bare hyper server answering fixed bytes: the limit.
    Bare,
    /// An earlier build of our daemon (`--baseline`), started exactly like ours.
    Baseline,
}

impl Kind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "metadataproxy (ours)",
            Self::Lyft => "Lyft 2.2.0 (gunicorn, 2 gevent)",
            Self::Bare => "bare hyper",
            Self::Baseline => "metadataproxy (baseline)",
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub proc: Proc,
    /// Settings of ours left out of its environment (the baseline's unknown ones).
    pub left_out: Vec<String>,
}

/// What the servers are started from.
#[derive(Debug, Clone)]
pub struct Programs {
    pub daemon: PathBuf,
    pub lyft_venv: PathBuf,
    /// This xtask binary (it hosts the bare server).
    pub xtask: PathBuf,
    pub moto: String,
    /// Scratch directory for logs and mapping files.
    pub dir: PathBuf,
    /// The earlier build given with `--baseline`.
    pub baseline: Option<Baseline>,
}

impl Programs {
    /// The command that starts `kind` on `addr`; `mapping` maps callers to roles (not used by Bare,
    /// which serves `body` instead). The baseline's settings are ours: see [`Self::restrict`].
    pub fn command(
        &self,
        kind: Kind,
        addr: SocketAddr,
        mapping: &Path,
        body: &Path,
    ) -> Result<Command> {
        Ok(match kind {
            Kind::Ours => daemon_command(&self.daemon, addr, &self.moto, mapping)?,
            Kind::Baseline => {
                let baseline = self
                    .baseline
                    .as_ref()
                    .context("no --baseline binary was given")?;
                daemon_command(&baseline.path, addr, &self.moto, mapping)?
            }
            Kind::Lyft => lyft::command(&self.lyft_venv, addr, &self.moto, mapping),
            Kind::Bare => {
                let mut cmd = Command::new(&self.xtask);
                cmd.arg("bench-bare-server")
                    .arg(addr.to_string())
                    .arg(body)
                    .env_clear()
                    .env("PATH", path_var());
                cmd
            }
        })
    }

    /// For the baseline, leaves out of `cmd` the settings it does not know (an older build may
    /// refuse them) and says which; the names left out. Nothing for the other kinds.
    pub fn restrict(&self, kind: Kind, cmd: &mut Command) -> Vec<String> {
        let left_out = match (kind, &self.baseline) {
            (Kind::Baseline, Some(baseline)) => baseline.restrict(cmd),
            _ => Vec::new(),
        };
        if !left_out.is_empty() {
            println!(
                "{}: left out the settings it does not know: {}",
                kind.name(),
                left_out.join(", ")
            );
        }
        left_out
    }

    /// Starts `kind` on a free port and waits until it listens.
    pub fn start(&self, kind: Kind, tag: &str, mapping: &Path, body: &Path) -> Result<Server> {
        self.start_with(kind, tag, mapping, body, &[])
    }

    /// [`Self::start`] with extra environment variables.
    pub fn start_with(
        &self,
        kind: Kind,
        tag: &str,
        mapping: &Path,
        body: &Path,
        env: &[(&str, String)],
    ) -> Result<Server> {
        let addr = loopback(free_port()?);
        let log = self.dir.join(format!("{tag}.log"));
        let mut cmd = self.command(kind, addr, mapping, body)?;
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let left_out = self.restrict(kind, &mut cmd);
        let mut proc = Proc::spawn(tag, &mut cmd, &log)?;
        proc.wait_listening(addr, Duration::from_secs(60))?;
        Ok(Server {
            kind,
            addr,
            proc,
            left_out,
        })
    }
}

/// Our daemon with exactly the variables the bench wants: mapping-file identification, mock API,
/// STS and IAM at moto, nothing read from this shell.
fn daemon_command(bin: &Path, addr: SocketAddr, moto: &str, mapping: &Path) -> Result<Command> {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", path_var())
        .env("HOST", addr.ip().to_string())
        .env("PORT", addr.port().to_string())
        // Its admin listener on a free port, not the default fixed one: two daemons run at once
        // (ours and the baseline), and other jobs on this machine may hold 45002.
        .env("ADMIN_LISTEN", loopback(free_port()?).to_string())
        .env("MOCK_API", "true")
        // The address-identification path; the eBPF path is measured by `bench-redirect`.
        .env("EBPF", "off")
        .env("METADATA_URL", "http://127.0.0.1:9")
        .env("DEFAULT_ACCOUNT_ID", ACCOUNT)
        .env("ROLE_MAPPING_FILE", mapping)
        .env("ROLE_MAPPING_RELOAD_INTERVAL", "1")
        .env("DEBUG", "false")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_STS", moto)
        .env("AWS_ENDPOINT_URL_IAM", moto)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    Ok(cmd)
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
