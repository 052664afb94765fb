//! The daemon killed (`SIGKILL`) and started again while callers in several cgroups keep fetching
//! credentials through the eBPF redirect: while it is down every connection fails (the stand-in
//! "real IMDS" sees nothing, nobody gets the host's or another caller's credentials); after the
//! restart every caller gets its own role again. Every key served is checked with moto.
//!
//! Run with `cargo xtask test-privileged` (root, one test thread, `--ignored`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metadataproxy_privileged_tests::{Cgroup, HOST_MARKER, fetch};
use metadataproxy_tests::{ImdsCredentials, Moto};

use crate::common::{CREDS, IMDS, World, mapping_by_rel};

const CALLERS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];

/// One request a caller made: when it started and ended, and what came back.
#[derive(Debug)]
struct Call {
    start: Instant,
    end: Instant,
    ok: bool,
    body: String,
}

/// Caller `cg` fetches `role`'s credentials without pause until `stop`.
fn load(cg: &Cgroup, role: &str, stop: &AtomicBool) -> Vec<Call> {
    let url = format!("{IMDS}{CREDS}{role}");
    let mut calls = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let got = fetch(cg, None, &url);
        calls.push(Call {
            start,
            end: Instant::now(),
            ok: got.ok,
            body: got.body,
        });
    }
    calls
}

/// Key served → (role, secret, token).
type Keys = BTreeMap<String, (String, String, String)>;

/// Answers before the kill, refused while down, answers after the restart.
#[derive(Debug, Default)]
struct Tally {
    before: usize,
    down: usize,
    after: usize,
}

/// Checks one caller's calls against the outage `(killed_at, restarted_at)`: refused while the
/// daemon was dead, otherwise its own credentials (collected in `keys` for moto), never the host's.
fn check(
    caller: &str,
    role: &str,
    calls: &[Call],
    (killed_at, restarted_at): (Instant, Instant),
    keys: &mut Keys,
    tally: &mut Tally,
) {
    for call in calls {
        assert_ne!(call.body, HOST_MARKER, "{caller} reached the real IMDS");
        if call.start > killed_at && call.end < restarted_at {
            assert!(
                !call.ok,
                "{caller} was answered while the daemon was dead: {}",
                call.body
            );
            tally.down += 1;
            continue;
        }
        if !call.ok {
            // Only a call that overlapped the kill or the restart may fail.
            assert!(
                call.start <= killed_at + Duration::from_millis(100) || call.end >= restarted_at,
                "{caller} failed outside the outage"
            );
            continue;
        }
        // Regression: a restarted daemon dropped the kernel's records of connections already
        // in its backlog and told those callers they had no role (404).
        assert!(
            !call.body.contains("Not Found"),
            "{caller} was told it has no role ({:?} after the restart began)",
            call.start.saturating_duration_since(restarted_at)
        );
        let creds: ImdsCredentials = serde_json::from_str(&call.body)
            .unwrap_or_else(|e| {
                panic!(
                    "{caller}: not credentials ({e}): {} (started {:?} after the kill, {:?} after the restart began)",
                    call.body,
                    call.start.saturating_duration_since(killed_at),
                    call.start.saturating_duration_since(restarted_at)
                )
            });
        let entry = (role.to_owned(), creds.secret_access_key, creds.token);
        if let Some(prev) = keys.insert(creds.access_key_id, entry) {
            assert_eq!(
                &prev.0, role,
                "one key served to {caller} and to a {}",
                prev.0
            );
        }
        if call.end < killed_at {
            tally.before += 1;
        } else {
            tally.after += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn sigkill_and_restart_under_load_fails_closed_then_serves_each_its_own_role() {
    let moto = Moto::start().await;
    let roles: Vec<String> = CALLERS.iter().map(|c| format!("role-{c}")).collect();
    for role in &roles {
        moto.create_role(role, "/").await;
    }
    let pairs: Vec<(&str, &str)> = CALLERS
        .iter()
        .zip(&roles)
        .map(|(c, r)| (*c, r.as_str()))
        .collect();
    let world = World::new(&mapping_by_rel(&pairs));
    let cgroups: Vec<Cgroup> = CALLERS.iter().map(|c| world.root.child(c)).collect();
    let endpoint = moto.endpoint();
    let sts = [
        ("AWS_ENDPOINT_URL_STS", endpoint.as_str()),
        ("AWS_ENDPOINT_URL_IAM", endpoint.as_str()),
    ];
    let daemon = world.daemon(&sts);

    let stop = Arc::new(AtomicBool::new(false));
    let (killed_at, restarted_at, calls) = std::thread::scope(|s| {
        let workers: Vec<_> = cgroups
            .iter()
            .zip(&roles)
            .map(|(cg, role)| {
                let stop = Arc::clone(&stop);
                s.spawn(move || load(cg, role, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        daemon.kill();
        let killed_at = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let restarted_at = Instant::now();
        let again = world.daemon(&sts);
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
        let calls: Vec<Vec<Call>> = workers
            .into_iter()
            .map(|w| w.join().expect("caller thread"))
            .collect();
        drop(again);
        (killed_at, restarted_at, calls)
    });

    let mut keys = Keys::new();
    let mut tally = Tally::default();
    for ((calls, role), caller) in calls.iter().zip(&roles).zip(CALLERS) {
        check(
            caller,
            role,
            calls,
            (killed_at, restarted_at),
            &mut keys,
            &mut tally,
        );
        let last = calls.last().expect("at least one call");
        assert!(
            last.ok,
            "{caller} not served again after the restart: {last:?}"
        );
    }
    for (key, (role, secret, token)) in &keys {
        let arn = moto.caller_identity_arn(key, secret, token).await;
        assert!(
            arn.contains(&format!("assumed-role/{role}/")),
            "a key served for {role} is {arn}"
        );
    }
    assert!(tally.down > 0, "no call fell into the outage");
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
    eprintln!(
        "{} callers: {} answers before SIGKILL, {} refused while down, {} after the restart; {} \
         distinct keys, each its caller's own role (moto); stand-in IMDS saw 0",
        CALLERS.len(),
        tally.before,
        tally.down,
        tally.after,
        keys.len()
    );
}
