//! Privileged test harness (root): a stand-in "real IMDS" on local metadata addresses, test cgroups,
//! network namespaces behind a bridge, a private bpffs, and the daemon started inside a cgroup.
//!
//! Every resource is a guard whose `Drop` removes it, so a failing test leaves nothing behind.

mod net;
mod site;
mod standin;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use net::{Bridge, GATEWAY, Netns};
pub use site::{HOST_MAC, Site, UDP_PORT};
pub use standin::{HOST_MARKER, Standin};

/// Where cgroup v2 is mounted, or a panic naming what is missing.
pub fn cgroup2() -> PathBuf {
    metadataproxy_tests::cgroup2_mount()
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test cgroup (and its children), removed when dropped.
#[derive(Debug)]
pub struct Cgroup {
    /// Path relative to the cgroup2 mount, e.g. `/mp-test-123/a`.
    pub rel: String,
    /// Absolute directory.
    pub dir: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2>/<rel>`.
    pub fn new(rel: &str) -> Self {
        let dir = cgroup2().join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self {
            rel: rel.to_owned(),
            dir,
        }
    }

    /// A child cgroup (removed before its parent, because it is dropped first).
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        Self::new(&format!("{}/{name}", self.rel))
    }

    /// `sh -c` prefix that moves the shell into this cgroup before it `exec`s the rest.
    pub fn enter(&self) -> String {
        format!("echo $$ > {}/cgroup.procs && exec", self.dir.display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes may take a moment to leave after being killed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove cgroup {}", self.dir.display());
    }
}

/// A private bpffs mount in a temporary directory (its pins vanish with it).
#[derive(Debug)]
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    /// Mounts a fresh bpffs.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mp-bpffs-")
            .tempdir()
            .expect("tempdir");
        sh(&format!("mount -t bpf bpf {}", dir.path().display()));
        Self { dir }
    }

    /// The daemon's pin directory inside it.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("metadataproxy")
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// What a caller got: whether curl succeeded, and the body.
#[derive(Debug)]
pub struct Fetched {
    pub ok: bool,
    pub body: String,
    pub stderr: String,
}

fn fetched(out: &Output) -> Fetched {
    Fetched {
        ok: out.status.success(),
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `sh -c` command of a caller in `cgroup` (and `netns`) fetching `url` with curl.
pub fn caller_cmd(cgroup: &Cgroup, netns: Option<&Netns>, url: &str) -> Command {
    let ns = netns
        .map(|n| format!("ip netns exec {} ", n.name))
        .unwrap_or_default();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{} {ns}curl -sS -g -m 5 '{url}'", cgroup.enter()))
        .stdin(Stdio::null());
    cmd
}

/// One caller in `cgroup` (and `netns`) fetching `url`.
pub fn fetch(cgroup: &Cgroup, netns: Option<&Netns>, url: &str) -> Fetched {
    fetched(
        &caller_cmd(cgroup, netns, url)
            .output()
            .expect("running curl"),
    )
}

/// The daemon binary, started inside its own cgroup with exactly the given variables.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `$METADATAPROXY_BIN` in `cgroup` and waits until it accepts on 127.0.0.1:`port`.
    pub fn start(cgroup: &Cgroup, vars: &BTreeMap<String, String>, port: u16) -> Self {
        Self::start_via(cgroup, vars, port, "")
    }

    /// Like [`Daemon::start`], with the binary run through `wrapper` (e.g. `setpriv …`), which is
    /// exec'd after the shell has moved itself into `cgroup`.
    pub fn start_via(
        cgroup: &Cgroup,
        vars: &BTreeMap<String, String>,
        port: u16,
        wrapper: &str,
    ) -> Self {
        let mut daemon = Self::spawn(cgroup, vars, wrapper);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // The socket is bound before the redirect is attached; "listening" is logged after.
        daemon.wait_until(|d| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && d.logs().contains("listening")
        });
        daemon
    }

    /// Starts `$METADATAPROXY_BIN` in `cgroup` and network namespace `netns` (entered with
    /// `nsenter --net`, which keeps the machine's `/sys`, cgroup2 and bpffs mounts, unlike
    /// `ip netns exec`) and waits until it logs that it listens (the redirect is attached then).
    pub fn start_in_netns(cgroup: &Cgroup, vars: &BTreeMap<String, String>, netns: &str) -> Self {
        let mut daemon = Self::spawn(cgroup, vars, &format!("nsenter --net=/run/netns/{netns}"));
        daemon.wait_until(|d| d.logs().contains("listening"));
        daemon
    }

    fn spawn(cgroup: &Cgroup, vars: &BTreeMap<String, String>, wrapper: &str) -> Self {
        let bin = metadataproxy_tests::required_path("METADATAPROXY_BIN");
        let dir = tempfile::Builder::new()
            .prefix("mp-daemon-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("stderr.log");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {wrapper} {}", cgroup.enter(), bin.display()))
            .env_clear()
            .env("PATH", metadataproxy_tests::path_var())
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting the daemon");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// Waits (15 s at most) until `ready`, panicking with the logs if the daemon exits first.
    fn wait_until(&mut self, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited ({status}):\n{}", self.logs());
            }
            if ready(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not listening:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id (the shell that started it exec'd into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (clean shutdown), and wait for it to exit.
    pub fn terminate(mut self) -> String {
        sh(&format!("kill -TERM {}", self.child.id()));
        let _ = self.child.wait();
        self.logs()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}", self.logs());
        }
    }
}

/// Whether a path exists (for "nothing left behind" checks).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
