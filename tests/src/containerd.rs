//! A real `containerd` per test: its own socket, root, state and config (the CRI plugin off), a
//! busybox root filesystem for `ctr run --rootfs` (no image needed), containers placed in cgroups
//! below a parent of their own, and everything removed again when dropped — tasks, containers,
//! cgroups, files.
//!
//! Kubernetes pods are made by the real CRI plugin: [`ContainerdD::start_cri`] starts one with it
//! on, driven through the CRI API (`cri.rs`). Record shapes the real plugin cannot give here
//! (other containerd versions, the systemd cgroup driver, malformed metadata) are the daemon's
//! unit tests' business.
//!
//! Needs root and `containerd`, `runc` (installed with `docker.io`). Without root the machine
//! cannot run containerd: [`ContainerdD::start`] returns `None` and says why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::docker::{busybox_rootfs, cgroup2_mount, terminate};

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const START_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running containerd, stopped and cleaned up when dropped.
#[derive(Debug)]
pub struct ContainerdD {
    child: Option<Child>,
    dir: TempDir,
    parent: String,
    /// `(namespace, id)` of every container made, for the cleanup.
    containers: Vec<(String, String)>,
    execs: AtomicU32,
    /// Whether the CRI plugin is on (its pods' containers are removed at cleanup too).
    cri: bool,
}

/// What `ctr task exec` reported: (success, stdout, stderr).
pub type ExecResult = (bool, String, String);

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

impl ContainerdD {
    /// Starts containerd; `None` (with the reason printed) only when this machine cannot run it.
    pub fn start() -> Option<ContainerdD> {
        Self::start_with(false)
    }

    /// Starts containerd, with its CRI plugin on when `cri` (configured by `cri.rs`).
    pub(crate) fn start_with(cri: bool) -> Option<ContainerdD> {
        let euid = crate::effective_uid();
        if euid != "0" {
            eprintln!("SKIPPED: containerd needs root (effective uid {euid})");
            return None;
        }
        for tool in [CONTAINERD, CTR, "/usr/sbin/runc"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run `cargo xtask setup` (docker.io brings containerd and runc)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("mpctd-")
            .tempdir()
            .expect("temp dir for containerd");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let parent = format!("/mpctd{}x{n}", std::process::id() % 100_000);
        let mut ctd = ContainerdD {
            child: None,
            dir,
            parent,
            containers: Vec::new(),
            execs: AtomicU32::new(0),
            cri,
        };
        busybox_rootfs(&ctd.path("rootfs"));
        ctd.write_config();
        ctd.launch();
        // The containers' cgroup parent exists from the start, so a redirect can attach to it.
        let v2 = cgroup2_mount().join(ctd.parent.trim_start_matches('/'));
        std::fs::create_dir_all(&v2)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", v2.display()));
        Some(ctd)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// containerd's gRPC socket, for `CONTAINERD_ADDRESS`.
    pub fn address(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    /// The cgroup v2 path (relative to the cgroup2 mount) holding every container of this test.
    pub fn cgroup_parent(&self) -> String {
        self.parent.clone()
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    fn write_config(&self) {
        let p = |name: &str| self.path(name).display().to_string();
        let mut config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [{cri}\"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.zfs\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = p("root"),
            state = p("state"),
            sock = p("containerd.sock"),
            opt = p("opt"),
            cri = if self.cri {
                ""
            } else {
                "\"io.containerd.grpc.v1.cri\", "
            },
        );
        if self.cri {
            config.push_str(&crate::cri::plugin_config(self.dir.path()));
        }
        std::fs::write(self.path("config.toml"), config).expect("containerd config");
    }

    fn launch(&mut self) {
        if let Err(why) = self.try_launch() {
            panic!("{why}; containerd's log:\n{}", self.log());
        }
    }

    /// Starts the containerd process and waits until it answers; says why it did not.
    fn try_launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .map_err(|e| format!("containerd log: {e}"))?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(self.path("config.toml"))
            .arg("--root")
            .arg(self.path("root"))
            .arg("--state")
            .arg(self.path("state"))
            .arg("--address")
            .arg(self.address())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("log handle: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {CONTAINERD}: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("containerd exited ({status}) at start"));
            }
            if run(&mut self.ctr("default", &["version"])).status.success() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("containerd not answering after {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM). Its containers keep running under their shims.
    pub fn stop_daemon(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(20));
        }
    }

    /// Starts containerd again on the same socket, root and state.
    pub fn restart_daemon(&mut self) {
        self.stop_daemon();
        self.launch();
    }

    /// A `ctr` command against this containerd, in namespace `ns`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", ns])
            .args(args)
            .env_remove("IAM_ROLE")
            .env_remove("IAM_EXTERNAL_ID");
        cmd
    }

    /// Runs `ctr args…` in `ns`, panicking on failure; returns its trimmed stdout.
    pub fn must(&self, ns: &str, args: &[&str]) -> String {
        let mut cmd = self.ctr(ns, args);
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}): {}{}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The cgroup v2 path a container placed at `rel` below the parent gets.
    pub fn cgroup_of(&self, rel: &str) -> String {
        format!("{}/{}", self.parent, rel.trim_matches('/'))
    }

    /// `ctr run -d --rootfs` of busybox `sleep 600` as container `id` in namespace `ns`, on the
    /// host network, in the cgroup `rel` below the parent, with extra `ctr run` flags `args`.
    pub fn run(&mut self, ns: &str, id: &str, rel: &str, args: &[&str]) {
        let cgroup = self.cgroup_of(rel);
        let rootfs = self.path("rootfs").display().to_string();
        let mut all = vec![
            "run",
            "--detach",
            "--null-io",
            "--net-host",
            "--rootfs",
            "--cgroup",
            &cgroup,
            // No image config: the spec's environment is only what is given here.
            "--env",
            "PATH=/bin",
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&rootfs, id, "/bin/sleep", "600"]);
        self.containers.push((ns.to_owned(), id.to_owned()));
        self.must(ns, &all);
    }

    /// `sh -c script` run inside container `id` (`ctr task exec`: in the container's cgroup).
    pub fn exec(&self, ns: &str, id: &str, script: &str) -> ExecResult {
        let exec_id = format!("e{}", self.execs.fetch_add(1, Ordering::SeqCst));
        let out = run(&mut self.ctr(
            ns,
            &[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                id,
                "sh",
                "-c",
                script,
            ],
        ));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `sh -c script` run by the host's busybox after moving itself into the cgroup v2 of the
    /// container placed at `rel`: a process of that container as far as the kernel (and so the
    /// eBPF redirect) can tell, and it needs no containerd (which `ctr task exec` does). Only for
    /// host-network containers (it stays in the host's network namespace).
    pub fn exec_in_cgroup(&self, rel: &str, script: &str) -> ExecResult {
        let procs = cgroup2_mount()
            .join(self.cgroup_of(rel).trim_start_matches('/'))
            .join("cgroup.procs");
        let out = run(Command::new("/bin/busybox").args([
            "sh",
            "-c",
            &format!("echo $$ > {} && {script}", procs.display()),
        ]));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Kills container `id`'s task (its init process exits; the container record stays).
    pub fn kill(&self, ns: &str, id: &str) {
        self.must(ns, &["task", "kill", "--signal", "SIGKILL", id]);
    }

    fn cleanup(&mut self) {
        // Containers outlive containerd (their shims keep them): bring it back to remove them.
        if self.child.is_none()
            && !self.containers.is_empty()
            && let Err(why) = self.try_launch()
        {
            eprintln!("cannot restart containerd to remove the test's containers: {why}");
        }
        if self.child.is_some() {
            if self.cri {
                // The CRI plugin's pods: their sandboxes and containers, by containerd's own list.
                let listed = run(&mut self.ctr(crate::cri::NAMESPACE, &["containers", "ls", "-q"]));
                for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                    self.containers
                        .push((crate::cri::NAMESPACE.to_owned(), id.to_owned()));
                }
            }
            for (ns, id) in std::mem::take(&mut self.containers) {
                let _ = run(&mut self.ctr(&ns, &["task", "kill", "--signal", "SIGKILL", &id]));
                let _ = run(&mut self.ctr(&ns, &["task", "delete", "--force", &id]));
                let _ = run(&mut self.ctr(&ns, &["containers", "delete", &id]));
            }
        }
        self.stop_daemon();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root = self.dir.path().display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // The (now empty) cgroups, in the v2 tree and every v1 hierarchy, deepest first.
        let rel = self.parent.trim_start_matches('/');
        remove_cgroups(&cgroup2_mount().join(rel));
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                remove_cgroups(&h.path().join(rel));
            }
        }
    }
}

/// Removes the cgroup at `dir` and every cgroup below it (each must be empty of processes).
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for ContainerdD {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- containerd log (last 40 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.cleanup();
    }
}
