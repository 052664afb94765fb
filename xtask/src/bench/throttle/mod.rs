//! Issue 15, when STS throttles: our daemon (every setting at its default) behind a relay that
//! answers `Throttling` to AssumeRole calls beyond a rate below the daemon's cap; callers holding
//! credentials keep asking, new callers are added, and the relay, `/metrics` and the log are read.

mod callers;
mod relay;
mod report;
mod said;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

pub use self::callers::{HolderAnswers, NewCaller};
pub use self::relay::Call;
use self::relay::Relay;
pub use self::said::DaemonSaid;
use super::moto::Moto;
use super::servers::{Kind, Programs, loopback};
use crate::process::free_port;

/// Longest the daemon may take to prefetch the holders' roles at start.
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Time given to the daemon after the relay passed the last prefetch, to store its answer.
const SETTLE: Duration = Duration::from_millis(500);

/// How much to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Callers mapped and served before STS throttles, asking again while it does.
    pub holders: usize,
    /// Callers added to the mapping once STS throttles.
    pub new_callers: usize,
    /// AssumeRole calls a second the relay passes once it throttles (below the daemon's cap).
    pub sts_rate: usize,
}

/// The full run: 50 holders, 50 new callers, STS passing half the daemon's default cap.
pub const FULL: Size = Size {
    holders: 50,
    new_callers: 50,
    sts_rate: 5,
};

/// The smoke version, still throttled: 5 new callers meet STS passing 2 a second.
pub const QUICK: Size = Size {
    holders: 5,
    new_callers: 5,
    sts_rate: 2,
};

impl Size {
    /// Longest the throttled phase may last: three times the least time the relay's rate allows
    /// the new callers' calls (`new_callers / sts_rate` s), plus 30 s for backoffs in a row.
    pub fn bound(self) -> Duration {
        let least_ms = 1000 * self.new_callers / self.sts_rate.max(1);
        Duration::from_millis(u64::try_from(3 * least_ms).unwrap_or(u64::MAX))
            + Duration::from_secs(30)
    }
}

/// What the relay saw of the daemon's AssumeRole calls, over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelaySeen {
    /// Calls forwarded to moto.
    pub passed: usize,
    /// Calls answered `Throttling`.
    pub throttled: usize,
    /// The most calls within any one-second window.
    pub busiest_second: usize,
    /// The most `Throttling` answers one role got.
    pub most_throttled_role: usize,
    /// Requests moto did not answer (the relay answered `502`).
    pub forward_errors: usize,
}

impl RelaySeen {
    /// The summary of `calls` (oldest first).
    pub fn of(calls: &[Call], forward_errors: usize) -> Self {
        let throttled = calls.iter().filter(|c| c.throttled).count();
        let mut per_role = std::collections::HashMap::<&str, usize>::new();
        for c in calls.iter().filter(|c| c.throttled) {
            *per_role.entry(c.role.as_str()).or_default() += 1;
        }
        let times: Vec<Instant> = calls.iter().map(|c| c.at).collect();
        Self {
            passed: calls.len() - throttled,
            throttled,
            busiest_second: relay::busiest_second(&times),
            most_throttled_role: per_role.values().copied().max().unwrap_or(0),
            forward_errors,
        }
    }
}

/// Everything the throttle scenario measured.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// What was measured.
    pub size: Size,
    /// The daemon's `STS_MAX_CALLS_PER_SECOND`: the one its `WARN` line names, else the default.
    pub cap: u32,
    /// Longest the throttled phase could last ([`Size::bound`]).
    pub bound: Duration,
    /// How long it lasted: from the throttling switched on to the last new caller served (or
    /// the bound).
    pub took: Duration,
    /// What the holders were answered while STS throttled.
    pub holders: HolderAnswers,
    /// Each new caller's wait.
    pub new_callers: Vec<NewCaller>,
    /// The daemon's AssumeRole calls, as the relay saw them.
    pub relay: RelaySeen,
    /// The daemon's `/metrics` and log lines at the end.
    pub said: DaemonSaid,
}

/// Runs the scenario against moto (which gets its roles, `bench-throttle-NNNN`). Fails only
/// when something could not run; what the daemon did wrong is in the result's targets.
pub async fn run(programs: &Programs, moto: &Moto, size: Size) -> Result<Throttle> {
    let default_cap = usize::try_from(said::DEFAULT_CAP)?;
    ensure!(
        size.holders > 0
            && size.new_callers > 0
            && size.holders + size.new_callers <= callers::MOST_CALLERS
            && (1..default_cap).contains(&size.sts_rate),
        "throttle scenario: {size:?} needs holders, new callers (at most {} in all) and an STS \
         rate below the daemon's cap ({default_cap})",
        callers::MOST_CALLERS
    );
    crate::step(&format!(
        "STS throttling: {} callers holding credentials, {} new ones, STS passing {} AssumeRole \
         calls a second (the daemon's cap: its default, {default_cap})",
        size.holders, size.new_callers, size.sts_rate
    ));
    let all = size.holders + size.new_callers;
    let roles: Vec<String> = (0..all).map(callers::role).collect();
    moto.create_roles(&roles).await?;
    let relay = Relay::start(moto.endpoint()).await?;
    let mapping = programs.dir.join("throttle-callers.json");
    callers::write_mapping(&mapping, 0..size.holders)?;
    let admin = loopback(free_port()?);
    let mut daemon = programs.start_with(
        Kind::Ours,
        "ours-throttle",
        &mapping,
        // The bare server's body: unused by ours.
        &programs.dir.join("throttle-unused"),
        &[
            ("AWS_ENDPOINT_URL_STS", relay.url()),
            ("ADMIN_LISTEN", admin.to_string()),
        ],
    )?;

    // Before: every holder's role prefetched, each holder served once.
    let t0 = Instant::now();
    relay
        .wait_passed(size.holders, PREFETCH_TIMEOUT)
        .await
        .context("waiting for the daemon to prefetch the holders' roles")?;
    tokio::time::sleep(SETTLE).await;
    let keys = callers::held_keys(daemon.addr, size.holders).await?;
    println!(
        "  {} holders prefetched and served in {:?}",
        size.holders,
        t0.elapsed()
    );

    // While STS throttles: the new callers mapped; everyone asks.
    relay.throttle_above(size.sts_rate);
    let start = Instant::now();
    callers::write_mapping(&mapping, 0..all)?;
    let deadline = start + size.bound();
    let holders = callers::Holders::start(daemon.addr, keys);
    let asking: Vec<_> = (size.holders..all)
        .map(|i| tokio::spawn(callers::ask_until_served(daemon.addr, i, deadline)))
        .collect();
    let mut new_callers = Vec::with_capacity(asking.len());
    for task in asking {
        new_callers.push(task.await.context("a new caller panicked")?);
    }
    let took = start.elapsed();
    let holders = holders.stop().await?;
    daemon.proc.check_running()?;

    let seen = RelaySeen::of(&relay.calls(), relay.forward_errors());
    let said = said::read(&daemon, admin, seen.throttled).await?;
    let served = new_callers
        .iter()
        .filter(|c| c.served_after.is_some())
        .count();
    println!(
        "  {served} of {} new callers served in {took:?} (bound {:?}); holders answered {} \
         times, {} failures; the relay passed {} AssumeRole calls, throttled {}, at most {} in a \
         second",
        size.new_callers,
        size.bound(),
        holders.answers,
        holders.failures,
        seen.passed,
        seen.throttled,
        seen.busiest_second
    );
    Ok(Throttle {
        size,
        cap: said.cap_logged.unwrap_or(said::DEFAULT_CAP),
        bound: size.bound(),
        took,
        holders,
        new_callers,
        relay: seen,
        said,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_three_times_the_least_plus_backoffs() {
        assert_eq!(FULL.bound(), Duration::from_secs(60));
        assert_eq!(QUICK.bound(), Duration::from_millis(37_500));
    }

    #[test]
    fn sizes_throttle_below_the_default_cap() {
        for size in [FULL, QUICK] {
            assert!(size.sts_rate < usize::try_from(said::DEFAULT_CAP).unwrap());
            assert!(
                size.new_callers > size.sts_rate,
                "{size:?} would never throttle"
            );
        }
    }

    #[test]
    fn the_relay_summary_counts_per_role_and_per_second() {
        let t = Instant::now();
        let call = |ms: u64, role: &str, throttled: bool| Call {
            at: t + Duration::from_millis(ms),
            role: role.to_owned(),
            throttled,
        };
        let calls = [
            call(0, "a", false),
            call(100, "b", true),
            call(200, "c", false),
            call(1100, "b", true),
            call(1150, "b", false),
            call(1300, "c", true),
        ];
        assert_eq!(
            RelaySeen::of(&calls, 1),
            RelaySeen {
                passed: 3,
                throttled: 3,
                busiest_second: 3,
                most_throttled_role: 2,
                forward_errors: 1,
            }
        );
    }
}
