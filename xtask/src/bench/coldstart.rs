//! Cold start: from spawning the process to the first credentials it serves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::client;
use super::servers::{CREDS_PATH, Kind, Programs, loopback};
use crate::process::free_port;

/// Longest a server may take to serve its first credentials.
const LIMIT: Duration = Duration::from_secs(60);
/// Pause between polls (connect + GET).
const POLL: Duration = Duration::from_millis(2);

/// Starts `kind` `tries` times, each time polling with connect + GET until credentials come back.
pub async fn measure(
    programs: &Programs,
    kind: Kind,
    tries: usize,
    mapping: &Path,
    body: &Path,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for t in 0..tries {
        let addr = loopback(free_port()?);
        let mut cmd = programs.command(kind, addr, mapping, body)?;
        let log = programs.dir.join(format!("coldstart-{kind:?}-{t}.log"));
        let start = Instant::now();
        let mut proc = super::proc::Proc::spawn("cold start", &mut cmd, &log)?;
        loop {
            proc.check_running()?;
            if let Ok(resp) = client::once(None, addr, "GET", CREDS_PATH, &[], b"").await
                && resp.status == 200
            {
                break;
            }
            if start.elapsed() > LIMIT {
                bail!(
                    "{} served no credentials within {LIMIT:?}; its log:\n{}",
                    kind.name(),
                    proc.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        times.push(start.elapsed());
        println!(
            "  {}: first credentials after {:?}",
            kind.name(),
            start.elapsed()
        );
    }
    Ok(times)
}
