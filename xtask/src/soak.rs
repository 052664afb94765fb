//! `cargo xtask soak [--minutes N]`: the daemon under mixed load for N minutes (default 10) with
//! short-lived credentials, so they rotate many times. It fails unless there were no errors,
//! memory stayed flat and STS was called only at refresh points. Not part of CI.
//!
//! Credentials: `ROLE_SESSION_DURATION=900` (STS's minimum) and `ROLE_EXPIRATION_THRESHOLD=14`
//! minutes, so callers must always get more than 840 s left and a set is due for renewal 60 s
//! after issue; each set's refresh point is drawn 20–40 s before that (one to two thirds of the
//! 60 s room), i.e. 20–40 s after issue, and the background refresher (every 15 s, one tick
//! ahead) renews it 5–40 s after issue, before any caller could need it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use metadataproxy_tests::{ACCOUNT, Daemon, MappingFile, Moto};

use crate::bench::client::Conn;
use crate::{repo, setup, step};

const ROLES: usize = 4;
/// Callers (source addresses 127.0.0.10 onwards); caller `i` has role `i % ROLES`.
const CALLERS: usize = 8;
const SESSION_SECS: u64 = 900;
const THRESHOLD_MINUTES: u64 = 14;
/// The refresher renews a set this long after issue at the earliest and latest (see the top).
const REFRESH_EARLIEST: Duration = Duration::from_secs(5);
const REFRESH_LATEST: Duration = Duration::from_secs(40);
/// Pause between one caller's operations (the machine is shared; this is about time, not rate).
const PAUSE: Duration = Duration::from_millis(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Memory is flat if the last quarter's median RSS is within this (per mille, 10%) of the second
/// quarter's (the first quarter is warm-up).
const RSS_TOLERANCE_PERMILLE: i128 = 100;
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

fn role(i: usize) -> String {
    format!("soak-{i}")
}

fn caller(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(10 + i).unwrap_or(10))
}

/// What the callers saw.
#[derive(Debug, Default)]
struct Counts {
    v1: AtomicU64,
    v2: AtomicU64,
    errors: AtomicU64,
}

/// One credential set served: secret, token, expiration.
type Served = (String, String, SystemTime);
/// Per caller: the keys it was served.
type Keys = BTreeMap<String, Served>;

/// Runs the soak for `minutes`.
pub fn run(minutes: u64) -> Result<()> {
    ensure!(minutes > 0, "--minutes must be at least 1");
    let venv = setup::run()?;
    repo::build_daemon()?;
    let bin = repo::daemon_bin()?;
    let moto = venv.join("bin").join("moto_server");
    step(&format!(
        "soak: {minutes} min, {CALLERS} callers, {ROLES} roles, credentials rotating every 5-40 s"
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(soak(&moto, &bin, Duration::from_secs(minutes * 60)))
}

/// A `VmRSS` reading of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn soak(moto_bin: &Path, bin: &Path, duration: Duration) -> Result<()> {
    let moto = Moto::start_with(moto_bin).await;
    for i in 0..ROLES {
        moto.create_role(&role(i), "/").await;
    }
    let mapping: serde_json::Map<String, serde_json::Value> = (0..CALLERS)
        .map(|i| (caller(i).to_string(), serde_json::json!(role(i % ROLES))))
        .collect();
    let mapping = MappingFile::new(&serde_json::Value::Object(mapping));
    let mut daemon = Daemon::builder()
        .bin(bin)
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("ROLE_SESSION_DURATION", SESSION_SECS.to_string())
        .env("ROLE_EXPIRATION_THRESHOLD", THRESHOLD_MINUTES.to_string())
        .start()
        .await;
    let addr = daemon.addr();
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..CALLERS)
        .map(|i| tokio::spawn(worker(i, addr, until, Arc::clone(&counts))))
        .collect();

    let mut rss = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
        ensure!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());
        let kib = rss_kib(daemon.pid())?;
        let calls = moto.assume_role_count().await;
        let secs = started.elapsed().as_secs();
        println!(
            "  {secs:>5} s  RSS {kib:>7} KiB  requests {:>8}  errors {}  AssumeRole {calls}",
            counts.v1.load(Ordering::Relaxed) + counts.v2.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed)
        );
        rss.push(kib);
    }
    let mut keys: Vec<Keys> = Vec::new();
    let mut first_errors = Vec::new();
    for w in workers {
        let (k, e) = w.await?;
        keys.push(k);
        first_errors.extend(e);
    }
    let elapsed = started.elapsed();
    report(&moto, &counts, &keys, &first_errors, &rss, elapsed).await
}

/// Checks everything and prints the summary; fails on the first broken promise.
async fn report(
    moto: &Moto,
    counts: &Counts,
    keys: &[Keys],
    first_errors: &[String],
    rss: &[u64],
    elapsed: Duration,
) -> Result<()> {
    let (v1, v2) = (
        counts.v1.load(Ordering::Relaxed),
        counts.v2.load(Ordering::Relaxed),
    );
    let errors = counts.errors.load(Ordering::Relaxed);

    // Every key served is the caller's own role (moto), and each caller saw the rotations.
    let mut distinct = BTreeSet::new();
    for (i, served) in keys.iter().enumerate() {
        for (key, (secret, token, _)) in served {
            if distinct.insert(key.clone()) {
                let arn = moto.caller_identity_arn(key, secret, token).await;
                let want = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{}/", role(i % ROLES));
                ensure!(arn.starts_with(&want), "caller {i} was served {arn}");
            }
        }
    }
    let min_keys = keys.iter().map(BTreeMap::len).min().unwrap_or(0);

    let calls = moto.assume_role_count().await;
    let gaps = refresh_gaps(keys);
    let served = distinct.len();
    let (min_gap, max_gap) = (
        gaps.iter().min().copied().unwrap_or_default(),
        gaps.iter().max().copied().unwrap_or_default(),
    );
    let secs = elapsed.as_secs();
    // Each role: its first call, then one per 5-40 s (±1 for where the run cuts a period).
    let fewest = ROLES * usize::try_from(secs / REFRESH_LATEST.as_secs()).unwrap_or(0);
    let most =
        ROLES * (usize::try_from(secs.div_ceil(REFRESH_EARLIEST.as_secs())).unwrap_or(0) + 2);
    let (second, last) = rss_quarters(rss);
    // Growth from the second to the last quarter, per mille.
    let growth = if second > 0 {
        (i128::from(last) - i128::from(second)) * 1000 / i128::from(second)
    } else {
        0
    };

    println!(
        "\nsoak summary ({}:{:02} min)",
        elapsed.as_secs() / 60,
        elapsed.as_secs() % 60
    );
    println!(
        "  requests: {} ({v1} IMDSv1 listing+credentials, {v2} IMDSv2 token+credentials), errors: {errors}",
        v1 + v2
    );
    println!(
        "  credentials: {served} distinct keys served, each its caller's own role (moto); every caller saw at least {min_keys}"
    );
    println!(
        "  STS AssumeRole: {calls} calls for {ROLES} roles (expected {fewest}-{most}); gaps between a role's calls {min_gap:?}-{max_gap:?} (renewed 5-40 s after issue)"
    );
    println!(
        "  RSS: first {} KiB, min {} KiB, max {} KiB, last {} KiB; second-quarter median {second} KiB, last-quarter median {last} KiB ({growth:+}‰, limit +{RSS_TOLERANCE_PERMILLE}‰)",
        rss.first().copied().unwrap_or(0),
        rss.iter().min().copied().unwrap_or(0),
        rss.iter().max().copied().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
    );

    ensure!(
        errors == 0,
        "{errors} errors, first: {:?}",
        &first_errors[..first_errors.len().min(5)]
    );
    ensure!(v1 > 0 && v2 > 0, "no load ran");
    ensure!(
        min_keys >= 2 || secs < 60,
        "a caller never saw its credentials rotate"
    );
    // Every set STS issued reached a caller (the last refresh may land as the load stops).
    ensure!(
        served <= calls && calls <= served + ROLES,
        "{calls} AssumeRole calls but {served} keys served"
    );
    ensure!(
        (fewest..=most).contains(&calls),
        "{calls} AssumeRole calls, expected {fewest}-{most}"
    );
    // Whole-second expiries: allow 1 s either way, plus the STS round trip on the late side.
    ensure!(
        gaps.is_empty()
            || (min_gap + Duration::from_secs(1) >= REFRESH_EARLIEST
                && max_gap <= REFRESH_LATEST + Duration::from_secs(3)),
        "AssumeRole calls {min_gap:?}-{max_gap:?} apart: not only at refresh points"
    );
    ensure!(
        growth <= RSS_TOLERANCE_PERMILLE,
        "RSS grew {growth}‰ from the second to the last quarter"
    );
    println!("soak: passed");
    Ok(())
}

/// Per role, the gaps between the issue times of consecutive credential sets served (each set's
/// Expiration is its issue time + the session duration, in whole seconds).
fn refresh_gaps(keys: &[Keys]) -> Vec<Duration> {
    let mut issued: BTreeMap<usize, BTreeSet<SystemTime>> = BTreeMap::new();
    for (i, served) in keys.iter().enumerate() {
        let times = issued.entry(i % ROLES).or_default();
        times.extend(served.values().map(|(_, _, expiry)| *expiry));
    }
    issued
        .values()
        .flat_map(|times| {
            let times: Vec<SystemTime> = times.iter().copied().collect();
            times
                .windows(2)
                .map(|pair| pair[1].duration_since(pair[0]).unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The median RSS of the second quarter of the samples and of the last quarter.
fn rss_quarters(rss: &[u64]) -> (u64, u64) {
    let q = rss.len() / 4;
    if q == 0 {
        return (0, 0);
    }
    (median(&rss[q..2 * q]), median(&rss[rss.len() - q..]))
}

/// One caller until `until`: alternately IMDSv1 (listing, then credentials) and IMDSv2 (token,
/// then credentials), each on a new connection like a freshly started SDK.
async fn worker(
    i: usize,
    addr: SocketAddr,
    until: Instant,
    counts: Arc<Counts>,
) -> (Keys, Vec<String>) {
    let mut keys = Keys::new();
    let mut errors = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let v2 = n.is_multiple_of(2);
        match round(i, addr, v2).await {
            Ok((key, served)) => {
                keys.entry(key).or_insert(served);
                let counter = if v2 { &counts.v2 } else { &counts.v1 };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                if errors.len() < 5 {
                    errors.push(format!("caller {i}: {e:#}"));
                }
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    (keys, errors)
}

/// One round; returns the key, secret and token served, after checking the document.
async fn round(i: usize, addr: SocketAddr, v2: bool) -> Result<(String, Served)> {
    let own = role(i % ROLES);
    let mut conn = Conn::open(Some(caller(i)), addr).await?;
    let token;
    let headers: Vec<(&str, &str)> = if v2 {
        let put = conn.put_token().await?;
        ensure!(put.status == 200, "token PUT -> {}", put.status);
        token = put.text();
        vec![("X-aws-ec2-metadata-token", token.as_str())]
    } else {
        let list = conn.send("GET", CREDS, &[], b"").await?;
        ensure!(
            list.status == 200 && list.text() == own,
            "listing -> {} {:?}",
            list.status,
            list.text()
        );
        Vec::new()
    };
    if conn.closed() {
        conn = Conn::open(Some(caller(i)), addr).await?;
    }
    let resp = conn
        .send("GET", &format!("{CREDS}{own}"), &headers, b"")
        .await?;
    ensure!(
        resp.status == 200,
        "credentials -> {} {}",
        resp.status,
        resp.text()
    );
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).context("credentials JSON")?;
    ensure!(doc["Code"] == "Success", "{doc}");
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let expiry = humantime::parse_rfc3339(&text("Expiration")).context("Expiration")?;
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    // Callers always get more than the threshold left (whole seconds: 1 s of rounding).
    if left + Duration::from_secs(1) <= Duration::from_secs(THRESHOLD_MINUTES * 60) {
        bail!("served credentials with only {left:?} left");
    }
    Ok((
        text("AccessKeyId"),
        (text("SecretAccessKey"), text("Token"), expiry),
    ))
}
