//! A real `dockerd` per test: its own socket, data and exec roots, pid file and bridge (with a
//! subnet no other route uses), a busybox image imported from Debian's `busybox-static`, and
//! everything removed again when dropped — containers, networks, bridge, mounts, files.
//!
//! Needs root and `docker.io` + `busybox-static` (`cargo xtask setup` installs them). Without
//! root the machine cannot run dockerd: [`DockerD::start`] returns `None` and says why; any
//! other failure to start it fails the test.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The image every test container runs.
pub const IMAGE: &str = "mpd-busybox:latest";
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const BUSYBOX: &str = "/bin/busybox";
const START_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running dockerd, stopped and cleaned up when dropped.
#[derive(Debug)]
pub struct DockerD {
    child: Option<Child>,
    dir: TempDir,
    bridge: String,
    subnet: u8,
    networks: Vec<String>,
}

/// The cgroup parent of this dockerd's containers (`/<bridge name>`): its own subtree, so an eBPF
/// redirect attached there affects no other process on the machine.
fn cgroup_parent(bridge: &str) -> String {
    format!("/{bridge}")
}

/// Why this machine cannot run dockerd at all (not a failure of the code under test).
fn impossible() -> Option<String> {
    let euid = crate::effective_uid();
    (euid != "0").then(|| format!("dockerd needs root (effective uid {euid})"))
}

/// A /24 in 172.31.0.0/16 (or, for `second`, 172.30.0.0/16) that no route on this host uses.
fn free_subnet(second: bool) -> u8 {
    let routes = run(Command::new("ip").args(["-4", "route", "show", "table", "all"]));
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let base = if second { "172.30" } else { "172.31" };
    let start = std::process::id() % 200 + NEXT.fetch_add(7, Ordering::SeqCst);
    (0..250)
        .map(|i| u8::try_from((start + i) % 250 + 1).unwrap_or(1))
        .find(|n| !routes.contains(&format!("{base}.{n}.")))
        .unwrap_or_else(|| panic!("no free /24 in {base}.0.0/16 for a test network"))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup/unified` beside v1 controllers), from
/// this process's mount table as procfs reads it.
pub fn cgroup2_mount() -> PathBuf {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .unwrap_or_else(|e| panic!("cannot read /proc/self/mountinfo: {e}"))
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map_or_else(
            || panic!("no cgroup2 mount in /proc/self/mountinfo"),
            |m| m.mount_point,
        )
}

/// A root filesystem at `rootfs` holding Debian's static busybox and its applets.
pub(crate) fn busybox_rootfs(rootfs: &Path) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run `cargo xtask setup` (installs busybox-static)"
    );
    let bin = rootfs.join("bin");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dirs");
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let applets = must(Command::new(BUSYBOX).arg("--list"));
    for applet in applets.lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl DockerD {
    /// Starts dockerd and imports the busybox image; `None` (with the reason printed) only when
    /// this machine cannot run dockerd at all.
    pub fn start() -> Option<DockerD> {
        if let Some(why) = impossible() {
            eprintln!("SKIPPED: this machine cannot run dockerd: {why}");
            return None;
        }
        for tool in [DOCKERD, DOCKER, BUSYBOX] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run `cargo xtask setup` (installs docker.io and busybox-static)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("mpd-docker-")
            .tempdir()
            .expect("temp dir for dockerd");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let bridge = format!("mpd{}x{n}", std::process::id() % 100_000);
        let subnet = free_subnet(false);
        must(Command::new("ip").args(["link", "add", "name", &bridge, "type", "bridge"]));
        let mut docker = DockerD {
            child: None,
            dir,
            bridge,
            subnet,
            networks: Vec::new(),
        };
        must(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", docker.gateway()),
            "dev",
            &docker.bridge,
        ]));
        must(Command::new("ip").args(["link", "set", &docker.bridge, "up"]));
        docker.launch();
        docker.import_image();
        // The containers' cgroup parent exists from the start, so a redirect can attach to it.
        let v2 = cgroup2_mount().join(docker.bridge.as_str());
        std::fs::create_dir_all(&v2)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", v2.display()));
        Some(docker)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `unix://<dir>/docker.sock`, for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path("docker.sock").display())
    }

    /// The default bridge's gateway: the host address containers reach the daemon at.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.subnet, 1)
    }

    /// The cgroup v2 path (relative to the cgroup2 mount) holding every container of this dockerd.
    pub fn cgroup_parent(&self) -> String {
        cgroup_parent(&self.bridge)
    }

    /// dockerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    /// Starts the dockerd process and waits until it answers.
    fn launch(&mut self) {
        let log = std::fs::File::create(self.path("dockerd.log")).expect("dockerd log");
        let child = Command::new(DOCKERD)
            .arg("--host")
            .arg(self.url())
            .arg("--data-root")
            .arg(self.path("data"))
            .arg("--exec-root")
            .arg(self.path("exec"))
            .arg("--pidfile")
            .arg(self.path("docker.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .arg(format!("--bridge={}", self.bridge))
            .arg(format!("--cgroup-parent={}", cgroup_parent(&self.bridge)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {DOCKERD}: {e}"));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "dockerd exited ({status}) at start; its log:\n{}",
                    self.log()
                );
            }
            if self.cli(&["version"]).status.success() {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "dockerd not answering after {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd (SIGTERM: its containers stop too), as an operator restart would.
    pub fn stop_daemon(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(30));
        }
    }

    /// Starts dockerd again on the same socket and data.
    pub fn restart_daemon(&mut self) {
        self.stop_daemon();
        self.launch();
    }

    fn import_image(&self) {
        let rootfs = self.path("rootfs");
        busybox_rootfs(&rootfs);
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let mut import = self.command(&["import", "-", IMAGE]);
        import.stdin(tar.stdout.take().expect("tar stdout"));
        must(&mut import);
        let status = tar.wait().expect("waiting for tar");
        assert!(
            status.success(),
            "tar of the busybox rootfs failed ({status})"
        );
    }

    /// A `docker` command against this daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("--host").arg(self.url()).args(args);
        cmd.env_remove("IAM_ROLE").env_remove("IAM_EXTERNAL_ID");
        cmd
    }

    /// Runs `docker args…` and returns its output, whatever the outcome.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Runs `docker args…`, panicking on failure; returns its trimmed stdout.
    pub fn must(&self, args: &[&str]) -> String {
        must(&mut self.command(args))
    }

    /// `docker run -d <args…> IMAGE sleep 600`: a long-running container; returns its id.
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[IMAGE, "sleep", "600"]);
        self.must(&all)
    }

    /// The address of container `id` on network `network` (`bridge` for the default one).
    pub fn ip(&self, id: &str, network: &str) -> Ipv4Addr {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let ip = self.must(&["inspect", "-f", &format, id]);
        ip.parse()
            .unwrap_or_else(|_| panic!("container {id} has no address on {network}: {ip:?}"))
    }

    /// `docker exec id sh -c script`: (success, stdout, stderr).
    pub fn exec(&self, id: &str, script: &str) -> (bool, String, String) {
        let out = self.cli(&["exec", id, "sh", "-c", script]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates a user-defined bridge network with a free subnet; returns (name, gateway).
    pub fn create_network(&mut self) -> (String, Ipv4Addr) {
        let n = free_subnet(true);
        let name = format!("mpdnet{n}");
        self.must(&[
            "network",
            "create",
            "--subnet",
            &format!("172.30.{n}.0/24"),
            "--gateway",
            &format!("172.30.{n}.1"),
            "-o",
            &format!(
                "com.docker.network.bridge.name=mpdn{}x{n}",
                std::process::id() % 10_000
            ),
            &name,
        ]);
        self.networks.push(name.clone());
        (name, Ipv4Addr::new(172, 30, n, 1))
    }

    fn cleanup(&mut self) {
        if self.child.is_some() {
            let ids = self.cli(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.cli(&args);
            }
            for net in std::mem::take(&mut self.networks) {
                let _ = self.cli(&["network", "rm", &net]);
            }
        }
        self.stop_daemon();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        // Anything dockerd left mounted under our folder, deepest first.
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
        // The (now empty) cgroup parent, in every hierarchy.
        let _ = std::fs::remove_dir(cgroup2_mount().join(&self.bridge));
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&self.bridge));
            }
        }
    }
}

impl Drop for DockerD {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- dockerd log (last 40 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.cleanup();
    }
}

/// SIGTERM to a test daemon (dockerd, containerd), then SIGKILL if it is still there after
/// `grace`; reaped either way.
pub(crate) fn terminate(mut child: Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
