//! The refusal-line budgets, on a clock the tests move.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::{RefusalLimiter, Unreported, Verdict};
use crate::caller::Identity;

const WINDOW: Duration = Duration::from_secs(10);

fn ip(last: u8) -> Identity {
    Identity::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

/// Asks `n` times for `caller` at `at`; returns how many were logged and the suppressed counts
/// the logged ones carried.
fn ask_n(limiter: &RefusalLimiter, caller: &Identity, at: Instant, n: usize) -> (usize, Vec<u64>) {
    let mut logged = 0;
    let mut carried = Vec::new();
    for _ in 0..n {
        if let (Verdict::Log { suppressed }, _) = limiter.ask(caller, at) {
            logged += 1;
            if suppressed > 0 {
                carried.push(suppressed);
            }
        }
    }
    (logged, carried)
}

#[test]
fn a_flooding_caller_gets_its_budget_then_a_count_of_what_was_suppressed() {
    let limiter = RefusalLimiter::new(WINDOW, 5, 100, 100);
    let t0 = Instant::now();
    let a = ip(2);
    assert_eq!(ask_n(&limiter, &a, t0, 1000), (5, vec![]));
    // Another caller has its own budget.
    assert_eq!(ask_n(&limiter, &ip(3), t0, 3), (3, vec![]));
    // Next window: the first line says how many of a's lines were suppressed.
    let (logged, carried) = ask_n(&limiter, &a, t0 + WINDOW, 7);
    assert_eq!((logged, carried), (5, vec![995]));
    let (logged, carried) = ask_n(&limiter, &a, t0 + 2 * WINDOW, 1);
    assert_eq!((logged, carried), (1, vec![2]));
}

#[test]
fn all_callers_together_are_bounded_too() {
    let limiter = RefusalLimiter::new(WINDOW, 5, 12, 100);
    let t0 = Instant::now();
    let logged: usize = (1..=10).map(|i| ask_n(&limiter, &ip(i), t0, 5).0).sum();
    assert_eq!(logged, 12);
    // Every caller whose lines were suppressed is told in the next window.
    let carried: Vec<u64> = (1..=10)
        .flat_map(|i| ask_n(&limiter, &ip(i), t0 + WINDOW, 1).1)
        .collect();
    assert_eq!(carried.iter().sum::<u64>(), 50 - 12, "{carried:?}");
}

#[test]
fn a_caller_that_goes_quiet_is_summed_up_and_forgotten() {
    let limiter = RefusalLimiter::new(WINDOW, 2, 100, 100);
    let t0 = Instant::now();
    ask_n(&limiter, &ip(2), t0, 10);
    ask_n(&limiter, &ip(3), t0, 1);
    // One window later its debt is kept for its next line (it was active in the last window).
    let (_, unreported) = limiter.ask(&ip(4), t0 + WINDOW);
    assert_eq!(unreported, None);
    assert_eq!(limiter.tracked(), 2, "the debtor and the newcomer");
    // Quiet for a whole window: reported in one summary, and forgotten.
    let (_, unreported) = limiter.ask(&ip(4), t0 + 2 * WINDOW);
    assert_eq!(
        unreported,
        Some(Unreported {
            callers: 1,
            lines: 8
        })
    );
    assert_eq!(limiter.tracked(), 1);
}

#[test]
fn tracked_callers_are_bounded_and_the_rest_share_a_budget() {
    let limiter = RefusalLimiter::new(WINDOW, 3, 10_000, 4);
    let t0 = Instant::now();
    let logged: usize = (1..=100).map(|i| ask_n(&limiter, &ip(i), t0, 2).0).sum();
    // 4 tracked callers × 2, and 3 for the 96 others together.
    assert_eq!(logged, 4 * 2 + 3);
    assert_eq!(limiter.tracked(), 4);
    // All of them forgotten once quiet: memory does not grow with the callers ever seen.
    limiter.ask(&ip(200), t0 + WINDOW);
    limiter.ask(&ip(200), t0 + 3 * WINDOW);
    assert_eq!(limiter.tracked(), 1);
}
