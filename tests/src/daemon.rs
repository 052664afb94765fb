//! The daemon binary under test, started with exactly the variables a test gives it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::{free_port, loopback, wait_listening};
use crate::{MappingFile, Moto, NOWHERE, Upstream, path_var, required_path};

/// How long the daemon may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The variables a daemon starts with; defaults keep every upstream on loopback.
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    vars: BTreeMap<String, String>,
    /// The binary to run; `$METADATAPROXY_BIN` when not given.
    bin: Option<PathBuf>,
    /// Where its stderr goes instead of its log file (see [`DaemonBuilder::stderr_to`]).
    stderr: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// A running daemon, killed when dropped (its log is printed if the test is failing).
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

/// How a daemon that was expected to exit ended.
#[derive(Debug)]
pub struct Exited {
    /// `None` if it was still running at the deadline (it was killed).
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub elapsed: Duration,
    /// Whether anything accepted TCP on the configured `PORT` while it ran.
    pub was_listening: bool,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        let vars = [
            ("HOST", "127.0.0.1"),
            ("MOCK_API", "true"),
            ("METADATA_URL", NOWHERE),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_STS", NOWHERE),
            ("AWS_ENDPOINT_URL_IAM", NOWHERE),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            // IP-only mode: these tests run unprivileged-style; tests/privileged covers eBPF.
            ("EBPF", "off"),
            // Tests run many daemons at once: each that wants the admin listener gives it a port.
            ("ADMIN_LISTEN", "off"),
        ];
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            bin: None,
            stderr: None,
        }
    }
}

impl DaemonBuilder {
    /// Sets (or replaces) one variable.
    #[must_use]
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    /// Runs this binary instead of `$METADATAPROXY_BIN` (for callers other than the test suite).
    #[must_use]
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Sends its stderr (its log) to `sink`, e.g. the write end of a pipe, instead of the file
    /// that [`Daemon::logs`] reads (which then stays empty).
    #[must_use]
    pub fn stderr_to(mut self, sink: impl Into<std::os::fd::OwnedFd>) -> Self {
        self.stderr = Some(std::sync::Arc::new(sink.into()));
        self
    }

    /// Leaves one variable out entirely.
    #[must_use]
    pub fn without(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    /// STS and IAM are this moto.
    #[must_use]
    pub fn moto(self, moto: &Moto) -> Self {
        self.env("AWS_ENDPOINT_URL_STS", moto.endpoint())
            .env("AWS_ENDPOINT_URL_IAM", moto.endpoint())
    }

    /// Proxy mode with this upstream as `METADATA_URL`.
    #[must_use]
    pub fn upstream(self, upstream: &Upstream) -> Self {
        self.env("METADATA_URL", upstream.url())
            .env("MOCK_API", "false")
    }

    /// `ROLE_MAPPING_FILE` is this file.
    #[must_use]
    pub fn mapping(self, file: &MappingFile) -> Self {
        self.env("ROLE_MAPPING_FILE", file.path().display().to_string())
    }

    /// Follows `docker` with the eBPF redirect attached to its containers' cgroup parent (pins in
    /// `bpffs`, detached on exit) and its default target (169.254.170.45:PORT, which every
    /// container reaches), on a free port; non-IAM paths proxied to the metadata address (the
    /// stand-in).
    #[must_use]
    pub fn redirecting_docker(self, docker: &crate::DockerD, bpffs: &crate::BpfFs) -> Self {
        let port = free_port();
        self.env("HOST", "0.0.0.0")
            .env("PORT", port.to_string())
            .env("DOCKER_URL", docker.url())
            .env("MOCK_API", "false")
            .env("METADATA_URL", format!("http://{}", crate::METADATA_IP))
            .env("EBPF", "required")
            .env("EBPF_CGROUPS", docker.cgroup_parent())
            .env("EBPF_PIN_DIR", bpffs.pin_dir())
            .env("EBPF_ON_EXIT", "detach")
    }

    /// `DEFAULT_ACCOUNT_ID` is moto's account (no iam:GetRole lookups).
    #[must_use]
    pub fn default_account(self) -> Self {
        self.env("DEFAULT_ACCOUNT_ID", crate::ACCOUNT)
    }

    fn spawn(&self) -> (Child, TempDir) {
        let bin = self
            .bin
            .clone()
            .unwrap_or_else(|| required_path("METADATAPROXY_BIN"));
        let dir = tempfile::Builder::new()
            .prefix("metadataproxy-")
            .tempdir()
            .expect("temp dir for the daemon's logs");
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let child = Command::new(&bin)
            .env_clear()
            .env("PATH", path_var())
            .envs(&self.vars)
            .stdin(Stdio::null())
            .stdout(file("stdout.log"))
            .stderr(match &self.stderr {
                Some(sink) => Stdio::from(sink.try_clone().expect("duplicate the stderr sink")),
                None => Stdio::from(file("stderr.log")),
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        (child, dir)
    }

    /// Starts the daemon on a free port (unless `PORT` was given) and waits until it accepts TCP.
    pub async fn start(mut self) -> Daemon {
        if !self.vars.contains_key("PORT") {
            self = self.env("PORT", free_port().to_string());
        }
        let port: u16 = self.vars["PORT"].parse().unwrap_or_else(|_| {
            panic!("start() needs a numeric PORT, got {:?}", self.vars["PORT"])
        });
        let addr = loopback(port);
        let (mut child, dir) = self.spawn();
        if let Err(why) = wait_listening(addr, READY_TIMEOUT, &mut child).await {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            panic!(
                "metadataproxy {why}\nvariables: {:?}\nstderr:\n{stderr}",
                self.vars
            );
        }
        Daemon { child, addr, dir }
    }

    /// Runs a daemon that should refuse to start; watches `PORT` (if numeric) while it runs.
    pub async fn run_expecting_exit(self, timeout: Duration) -> Exited {
        let port: Option<u16> = self.vars.get("PORT").and_then(|p| p.parse().ok());
        let started = Instant::now();
        let (mut child, dir) = self.spawn();
        let mut was_listening = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("polling the daemon") {
                break Some(status);
            }
            if let Some(port) = port
                && tokio::net::TcpStream::connect(loopback(port)).await.is_ok()
            {
                was_listening = true;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Exited {
            status,
            stderr: std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
            elapsed: started.elapsed(),
            was_listening,
        }
    }
}

impl Daemon {
    /// A builder with safe defaults: `HOST=127.0.0.1`, mock API, every upstream on loopback.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// Its log once it contains `needle` (logs are written by a writer thread, a moment after the
    /// event); panics with the log after 5 s.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(&[needle]).await
    }

    /// Its log once it contains every one of `needles`. The audit lines and the other lines reach
    /// the log through different queues, so one appearing says nothing of the other; panics
    /// with the log after 5 s.
    pub async fn wait_for_logs(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            let missing: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| !logs.contains(n))
                .collect();
            if missing.is_empty() {
                return logs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon's log never showed {missing:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Its process id (e.g. to sample its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- metadataproxy stderr ({}) ---\n{}",
                self.addr,
                self.logs()
            );
        }
    }
}
