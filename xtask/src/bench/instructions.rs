//! Instructions per request under callgrind: our daemon, the bare server (and the baseline) answer
//! the same client on one keep-alive connection; each count is (total after warm-up + N requests −
//! total after the warm-up alone) / N, two fresh processes, so start-up and shutdown cancel out.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::client::Conn;
use super::proc::Proc;
use super::servers::{CREDS_PATH, Kind, Programs, loopback};
use crate::process::{self, free_port};

/// Sequences made before counting starts (connection set up, caches warm, the prefetch done).
const WARM_UP: usize = 200;
/// How long a server under callgrind may take to listen, and to write its counts once stopped.
const PATIENCE: Duration = Duration::from_secs(180);
/// Goal of issue 15, item 2: at most this many times the bare server's instructions.
pub const GOAL: f64 = 1.3;

/// What one request sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// `GET` of the cached credentials (IMDSv1).
    Get,
    /// `PUT /latest/api/token`, then the `GET` with that token (IMDSv2).
    TokenThenGet,
}

impl Sequence {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "`GET` cached credentials",
            Self::TokenThenGet => "IMDSv2 `PUT` token + `GET` credentials",
        }
    }
}

/// The counts of one run of the bench.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// Sequences counted (after the warm-up).
    pub sequences: usize,
    /// Instructions per sequence, by server and sequence.
    pub rows: Vec<(Kind, Sequence, u64)>,
}

/// Measured, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum Instructions {
    Measured(Counts),
    NotMeasured(String),
}

impl Counts {
    /// The count of `kind` for `sequence`.
    pub fn of(&self, kind: Kind, sequence: Sequence) -> Option<u64> {
        self.rows
            .iter()
            .find(|(k, s, _)| *k == kind && *s == sequence)
            .map(|(_, _, n)| *n)
    }

    /// `kind`'s count over the bare server's, for `sequence`.
    pub fn ratio_to_bare(&self, kind: Kind, sequence: Sequence) -> Option<f64> {
        let bare = self.of(Kind::Bare, sequence)?;
        let ours = self.of(kind, sequence)?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "instruction counts per request are far below 2^52"
        )]
        (bare > 0).then(|| ours as f64 / bare as f64)
    }
}

impl Instructions {
    /// The Markdown section.
    pub fn markdown(&self) -> String {
        let mut out = String::from("## Instructions per request (issue 15)\n\n");
        let counts = match self {
            Self::NotMeasured(why) => {
                let _ = writeln!(out, "Not measured: {why}.");
                return out;
            }
            Self::Measured(counts) => counts,
        };
        let _ = writeln!(
            out,
            "Each server runs under `valgrind --tool=callgrind` (user-space instructions of every \
             thread), with the same settings as in the load runs, and answers the bench's client \
             on one keep-alive connection: {WARM_UP} sequences of warm-up, then {} counted. Each \
             count is the total of a process that made the warm-up and the counted sequences less \
             that of another that made only the warm-up, over the sequences counted, so start-up, \
             prefetch and shutdown cancel out. Instructions do not depend on the machine's load.\n",
            counts.sequences
        );
        let kinds: Vec<Kind> = [Kind::Ours, Kind::Baseline, Kind::Bare]
            .into_iter()
            .filter(|k| counts.rows.iter().any(|(kind, _, _)| kind == k))
            .collect();
        out.push_str("| sequence |");
        for k in &kinds {
            let _ = write!(out, " {} |", k.name());
        }
        out.push_str(" ours × bare |\n|---|");
        for _ in &kinds {
            out.push_str("---:|");
        }
        out.push_str("---:|\n");
        for sequence in [Sequence::Get, Sequence::TokenThenGet] {
            let _ = write!(out, "| {} |", sequence.name());
            for k in &kinds {
                match counts.of(*k, sequence) {
                    Some(n) => {
                        let _ = write!(out, " {} |", thousands(n));
                    }
                    None => out.push_str(" — |"),
                }
            }
            match counts.ratio_to_bare(Kind::Ours, sequence) {
                Some(r) => {
                    let _ = writeln!(out, " {r:.2}× |");
                }
                None => out.push_str(" — |\n"),
            }
        }
        out
    }

    /// Issue 15's item 2 as targets: (what, goal, measured, met) per sequence.
    pub fn targets(&self) -> Vec<(String, String, String, Option<bool>)> {
        [Sequence::Get, Sequence::TokenThenGet]
            .into_iter()
            .map(|sequence| {
                let what = format!(
                    "instructions per request vs bare hyper: {}",
                    sequence.name()
                );
                let goal = format!("≤ {GOAL}×");
                match self {
                    Self::NotMeasured(why) => (what, goal, format!("not measured: {why}"), None),
                    Self::Measured(c) => match c.ratio_to_bare(Kind::Ours, sequence) {
                        Some(r) => (
                            what,
                            goal,
                            format!(
                                "{r:.2}× ({} against {})",
                                thousands(c.of(Kind::Ours, sequence).unwrap_or(0)),
                                thousands(c.of(Kind::Bare, sequence).unwrap_or(0))
                            ),
                            Some(r <= GOAL),
                        ),
                        None => (what, goal, "no count for the bare server".into(), None),
                    },
                }
            })
            .collect()
    }
}

/// `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Counts `sequences` of each kind of sequence for each of `kinds`. Only a server that fails
/// is an error; without valgrind (and no way to install it) the answer says why not.
pub async fn measure(
    programs: &Programs,
    kinds: &[Kind],
    mapping: &Path,
    body: &Path,
    sequences: usize,
) -> Result<Instructions> {
    if let Err(why) = ensure_valgrind() {
        println!("instructions per request will not be measured: {why}");
        return Ok(Instructions::NotMeasured(why));
    }
    let mut rows = Vec::new();
    for &sequence in &[Sequence::Get, Sequence::TokenThenGet] {
        for &kind in kinds {
            let run = Run {
                programs,
                kind,
                sequence,
                mapping,
                body,
            };
            let zero = run.total(0).await?;
            let many = run.total(sequences).await?;
            ensure!(
                many > zero,
                "{} under callgrind: {many} instructions after {sequences} more sequences than {zero}",
                kind.name()
            );
            let per = (many - zero) / sequences as u64;
            println!(
                "  {}: {} per {}",
                kind.name(),
                thousands(per),
                sequence.name()
            );
            rows.push((kind, sequence, per));
        }
    }
    Ok(Instructions::Measured(Counts { sequences, rows }))
}

/// valgrind on `PATH`, installed from Debian if missing (as root); otherwise why not.
fn ensure_valgrind() -> Result<(), String> {
    let present = || Command::new("valgrind").arg("--version").output().is_ok();
    if present() {
        return Ok(());
    }
    println!("valgrind is missing: installing it from Debian");
    let installed = process::run(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        process::run(Command::new("apt-get").args(["install", "-y", "-qq", "valgrind"]))
    });
    match installed {
        Ok(()) if present() => Ok(()),
        Ok(()) => Err("valgrind is still not on PATH after `apt-get install valgrind`".into()),
        Err(e) => Err(format!(
            "valgrind is not installed and `apt-get install -y valgrind` failed ({e:#})"
        )),
    }
}

/// One server and one sequence.
struct Run<'a> {
    programs: &'a Programs,
    kind: Kind,
    sequence: Sequence,
    mapping: &'a Path,
    body: &'a Path,
}

impl Run<'_> {
    /// The instructions of a whole process that answered the warm-up and then `count` sequences.
    async fn total(&self, count: usize) -> Result<u64> {
        let tag = format!(
            "callgrind-{}-{}-{count}",
            match self.kind {
                Kind::Ours => "ours",
                Kind::Baseline => "baseline",
                Kind::Bare => "bare",
                Kind::Lyft => "lyft",
            },
            match self.sequence {
                Sequence::Get => "get",
                Sequence::TokenThenGet => "v2",
            }
        );
        let out = self.programs.dir.join(format!("{tag}.out"));
        let addr = loopback(free_port()?);
        let mut inner = self
            .programs
            .command(self.kind, addr, self.mapping, self.body)?;
        self.programs.restrict(self.kind, &mut inner);
        let mut cmd = under_callgrind(&inner, &out);
        let log = self.programs.dir.join(format!("{tag}.log"));
        let mut proc = Proc::spawn(&tag, &mut cmd, &log)?;
        wait_listening_unseen(&mut proc, addr)?;
        self.client(addr, WARM_UP + count)
            .await
            .with_context(|| format!("{tag}: its log:\n{}", proc.log_tail()))?;
        let status = proc.stop(PATIENCE)?;
        ensure!(
            std::fs::metadata(&out).is_ok(),
            "{tag} wrote no callgrind counts ({status}); its log:\n{}",
            proc.log_tail()
        );
        summary(&std::fs::read_to_string(&out)?)
            .with_context(|| format!("reading {}", out.display()))
    }

    /// `n` sequences on one connection; every answer must be a 200.
    async fn client(&self, addr: SocketAddr, n: usize) -> Result<()> {
        let mut conn = Conn::open(None, addr).await?;
        for i in 0..n {
            let token = match self.sequence {
                Sequence::Get => None,
                Sequence::TokenThenGet => {
                    let resp = conn.put_token().await?;
                    ensure!(resp.status == 200, "token PUT {i}: {}", resp.status);
                    Some(resp.text())
                }
            };
            let headers: Vec<(&str, &str)> = token
                .as_deref()
                .map(|t| ("X-aws-ec2-metadata-token", t))
                .into_iter()
                .collect();
            let resp = conn.send("GET", CREDS_PATH, &headers, b"").await?;
            ensure!(
                resp.status == 200 && resp.text().contains("AccessKeyId"),
                "GET {i}: {} (no credentials)",
                resp.status
            );
        }
        Ok(())
    }
}

/// `inner` run by valgrind's callgrind, writing its counts to `out`, with `inner`'s environment.
fn under_callgrind(inner: &Command, out: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    // Every command of `Programs` starts from a cleared environment; so does this one.
    cmd.env_clear();
    for (name, value) in inner.get_envs() {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(inner.get_program())
        .args(inner.get_args());
    cmd
}

/// Waits until something listens on `addr`, reading `/proc/net/tcp` rather than connecting: a
/// probe connection would be counted, and how many a slow start takes varies.
fn wait_listening_unseen(proc: &mut Proc, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        proc.check_running()?;
        let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
        if is_listening(&table, addr) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listened on {addr} within {PATIENCE:?}; its log:\n{}",
                proc.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `/proc/net/tcp` (`table`) has a listening socket on `addr` (IPv4).
fn is_listening(table: &str, addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    // The kernel prints the address as the u32 in host order (little-endian here), then the port.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// The total instructions in a callgrind output file (its `summary:` line, or `totals:`).
fn summary(text: &str) -> Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("totals:")))
        .context("no summary: or totals: line")?;
    let first = line.split_whitespace().next().context("an empty summary")?;
    first
        .parse()
        .with_context(|| format!("summary {first:?} is not a count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_from_callgrind_output() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\n\nfn=main\n1 5\nsummary: 123456\n\ntotals: 123456\n";
        assert_eq!(summary(text).unwrap(), 123_456);
        assert_eq!(summary("events: Ir\ntotals: 77\n").unwrap(), 77);
        assert!(summary("events: Ir\n").is_err());
        assert!(summary("summary: many\n").is_err());
    }

    #[test]
    fn finds_a_listening_socket_and_only_that() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:B3C5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
             1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert!(is_listening(table, at(0xB3C5)));
        // Port 8080 is only in an established connection.
        assert!(!is_listening(table, at(0x1F90)));
        assert!(!is_listening(
            table,
            SocketAddr::from(([127, 0, 0, 2], 0xB3C5))
        ));
    }

    fn counts(ours_get: u64) -> Instructions {
        Instructions::Measured(Counts {
            sequences: 2000,
            rows: vec![
                (Kind::Ours, Sequence::Get, ours_get),
                (Kind::Bare, Sequence::Get, 9_106),
                (Kind::Ours, Sequence::TokenThenGet, 24_402),
                (Kind::Bare, Sequence::TokenThenGet, 20_162),
            ],
        })
    }

    #[test]
    fn the_targets_compare_ours_with_bare_per_sequence() {
        let targets = counts(10_225).targets();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].2, "1.12× (10,225 against 9,106)");
        assert_eq!(targets[0].3, Some(true));
        assert_eq!(targets[1].2, "1.21× (24,402 against 20,162)");
        assert_eq!(targets[1].3, Some(true));
        let over = counts(12_000).targets();
        assert_eq!(over[0].3, Some(false), "{over:?}");
        let none = Instructions::NotMeasured("no valgrind".into()).targets();
        assert!(
            none.iter()
                .all(|t| t.3.is_none() && t.2.contains("no valgrind"))
        );
    }

    #[test]
    fn the_table_has_a_column_per_server_measured() {
        let text = counts(10_225).markdown();
        assert!(
            text.contains("| sequence | metadataproxy (ours) | bare hyper | ours × bare |"),
            "{text}"
        );
        assert!(
            text.contains("| `GET` cached credentials | 10,225 | 9,106 | 1.12× |"),
            "{text}"
        );
        assert!(text.contains("2000 counted"), "{text}");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
