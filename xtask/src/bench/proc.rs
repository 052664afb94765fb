//! Benchmarked processes: each in its own process group, stopped with its children on drop; their RSS.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A process (and whatever it forks, e.g. gunicorn's workers) stopped when this drops.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout and stderr going to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", crate::process::describe(cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with its log if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections, failing early if the process exits.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// How many lines of its log contain `needle`.
    pub fn log_lines_containing(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The value of the first `key=value` field its log holds (up to the next space), if any.
    pub fn log_field(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let needle = format!(" {key}=");
        text.lines().find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
    }

    /// Resident memory of the process and all its descendants, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The anonymous part of [`Self::rss_kib`] (the rest is files mapped from the page cache:
    /// the executable and its libraries, shared and evictable), in KiB.
    pub fn rss_anon_kib(&self) -> Result<u64> {
        self.status_kib("RssAnon:")
    }

    /// The `field` of `/proc/<pid>/status`, summed over the process and its descendants.
    fn status_kib(&self, field: &str) -> Result<u64> {
        tree(self.pid())
            .into_iter()
            .map(|pid| {
                status_kib(pid, field)
                    .with_context(|| format!("{field} of {} (pid {pid})", self.name))
            })
            .sum()
    }

    /// Stops it with `SIGTERM` to its group and waits up to `timeout` for it to exit (a server
    /// under valgrind writes its counts on the way out); its exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        signal("TERM", &format!("-{}", self.pid()));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many processes it is (gunicorn: master + workers).
    pub fn process_count(&self) -> usize {
        tree(self.pid()).len()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM to the whole group lets gunicorn stop its workers; SIGKILL if it dawdles.
        let group = format!("-{}", self.pid());
        signal("TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("KILL", &group);
        let _ = self.child.wait();
    }
}

fn signal(name: &str, target: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}").as_str(), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `pid` and all its descendants, from the parent ids in `/proc/*/stat`.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(p) {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let current = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == current)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `field` (`VmRSS:`, `RssAnon:`) from `/proc/<pid>/status`, KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} line"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

impl Proc {
    /// Waits (up to `limit`) until the process and its descendants used no CPU for a tenth of a
    /// second: the work a load run left queued is done.
    pub async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.cpu_seconds();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.cpu_seconds();
            if now - last < 1.0 / CLOCK_TICKS {
                return;
            }
            last = now;
        }
    }

    /// CPU time (user + system) the process and its descendants have used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = tree(self.pid()).into_iter().filter_map(cpu_ticks).sum();
        #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
        let ticks = ticks as f64;
        ticks / CLOCK_TICKS
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// `utime + stime` from `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the command: state(0) ppid(1) … utime(11) stime(12).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}
