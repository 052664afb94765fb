//! wrk (from Debian) for keep-alive load: installed if missing, results read from a Lua `done` hook.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::stats::Sample;
use crate::process;

/// Prints one machine-readable line when wrk finishes: exact percentiles instead of rounded text.
const DONE_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// wrk, with its result script written once.
#[derive(Debug)]
pub struct Wrk {
    script: PathBuf,
}

impl Wrk {
    /// Makes sure `wrk` is installed (`apt-get install -y wrk`) and writes the result script in `dir`.
    pub fn prepare(dir: &Path) -> Result<Self> {
        if Command::new("wrk").arg("--version").output().is_err() {
            println!("wrk is missing: installing it from Debian");
            process::run(Command::new("apt-get").args(["update", "-qq"]))?;
            process::run(Command::new("apt-get").args(["install", "-y", "-qq", "wrk"]))
                .context("installing wrk (apt-get install -y wrk)")?;
        }
        let script = dir.join("wrk-done.lua");
        std::fs::write(&script, DONE_SCRIPT)?;
        Ok(Self { script })
    }

    /// `wrk -t2 -c<connections> -d<duration>` against `http://addr/path`.
    pub fn run(
        &self,
        addr: SocketAddr,
        path: &str,
        connections: usize,
        duration: Duration,
    ) -> Result<Sample> {
        let threads = connections.min(2);
        let out = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("-s")
            .arg(&self.script)
            .arg(format!("http://{addr}{path}"))
            .output()
            .context("running wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))
    }
}

/// The `BENCH requests duration_us socket_errors non2xx p50_us p99_us` line.
fn parse(stdout: &str) -> Result<Sample> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .context("no BENCH line")?;
    let n: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [requests, duration_us, socket_errors, non2xx, p50, p99] = n[..] else {
        bail!("BENCH line has {} fields, not 6", n.len());
    };
    let ok = requests.saturating_sub(non2xx);
    let errors = socket_errors + non2xx;
    #[expect(clippy::cast_precision_loss, reason = "microsecond latencies")]
    Ok(Sample {
        ops: ok,
        rps: super::stats::per_second(ok, Duration::from_micros(duration_us)),
        p50_us: p50 as f64,
        p99_us: p99 as f64,
        errors,
        first_error: (errors > 0)
            .then(|| format!("wrk: {socket_errors} socket errors, {non2xx} non-2xx/3xx responses")),
        token_refused: 0,
        cpu_us_per_op: 0.0,
        stolen: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_done_line() {
        let s = parse("Running 1s test\nBENCH 1000 500000 0 10 120 900\nRequests/sec: 1\n")
            .expect("parses");
        assert_eq!(s.ops, 990);
        assert!((s.rps - 1980.0).abs() < 1e-6);
        assert!((s.p99_us - 900.0).abs() < f64::EPSILON);
        assert_eq!(s.errors, 10);
    }
}
