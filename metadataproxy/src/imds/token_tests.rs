//! Tests for `IMDSv2` token issue, validation, expiry and bounds, driven by a manual clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use super::*;
use crate::clock::ManualClock;

fn ip(last: u8) -> Identity {
    Identity::Ip(IpAddr::V4(Ipv4Addr::new(172, 17, 0, last)))
}

fn store(total: usize, per_caller: usize) -> (TokenStore, ManualClock) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    (
        TokenStore::new(total, per_caller, Arc::new(clock.clone())),
        clock,
    )
}

fn issue(s: &TokenStore, who: &Identity, ttl: u32) -> String {
    s.issue(who, ttl)
        .unwrap_or_else(|e| panic!("issue failed: {e}"))
}

type TtlCase<'a> = (Option<&'a [u8]>, Result<u32, TtlError>);

#[test]
fn ttl_parsing_table() {
    let table: &[TtlCase] = &[
        (None, Err(TtlError::Missing)),
        (Some(b"1"), Ok(1)),
        (Some(b"21600"), Ok(21_600)),
        (Some(b"300"), Ok(300)),
        (Some(b"  60 "), Ok(60)),
        (Some(b"\t60"), Ok(60)),
        (Some(b"0060"), Ok(60)),
        (Some(b"0"), Err(TtlError::OutOfRange(0))),
        (Some(b"21601"), Err(TtlError::OutOfRange(21_601))),
        (
            Some(b"4294967296"),
            Err(TtlError::OutOfRange(4_294_967_296)),
        ),
        (
            Some(b"18446744073709551615"),
            Err(TtlError::OutOfRange(u64::MAX)),
        ),
        (
            Some(b"99999999999999999999999999999999"),
            Err(TtlError::OutOfRange(u64::MAX)),
        ),
        (Some(b""), Err(TtlError::NotANumber)),
        (Some(b"   "), Err(TtlError::NotANumber)),
        (Some(b"+5"), Err(TtlError::NotANumber)),
        (Some(b"-5"), Err(TtlError::NotANumber)),
        (Some(b"5.0"), Err(TtlError::NotANumber)),
        (Some(b"0x10"), Err(TtlError::NotANumber)),
        (Some(b"1e3"), Err(TtlError::NotANumber)),
        (Some(b"6 0"), Err(TtlError::NotANumber)),
        (Some(b"sixty"), Err(TtlError::NotANumber)),
        (Some(b"\xd9\xa3"), Err(TtlError::NotANumber)), // Arabic-Indic digit three
    ];
    for (raw, want) in table {
        let header =
            raw.map(|b| HeaderValue::from_bytes(b).unwrap_or_else(|e| panic!("{b:?}: {e}")));
        assert_eq!(parse_ttl(header.as_ref()), *want, "header {raw:?}");
    }
}

#[test]
fn token_shape_is_43_url_safe_characters_and_unique() {
    let (s, _) = store(100, 100);
    let a = issue(&s, &ip(1), 60);
    let b = issue(&s, &ip(1), 60);
    assert_eq!(a.len(), 43);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(a, b);
}

#[test]
fn expiry_is_exact_at_the_boundary() {
    let (s, clock) = store(100, 100);
    let t = issue(&s, &ip(1), 10);
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert_eq!(
        s.validate(&t, &ip(1)),
        Ok(()),
        "valid one nanosecond before expiry"
    );
    clock.advance(Duration::from_nanos(1));
    assert_eq!(
        s.validate(&t, &ip(1)),
        Err(TokenError::Expired),
        "expired exactly at issue + ttl"
    );
    assert_eq!(
        s.validate(&t, &ip(1)),
        Err(TokenError::Unknown),
        "an expired token is dropped"
    );
    assert!(s.is_empty());
}

#[test]
fn ttl_above_maximum_is_capped() {
    let (s, clock) = store(100, 100);
    let t = issue(&s, &ip(1), u32::MAX);
    clock.advance(Duration::from_secs(u64::from(MAX_TTL_SECS)));
    assert_eq!(s.validate(&t, &ip(1)), Err(TokenError::Expired));
}

#[test]
fn another_caller_cannot_use_a_token_and_does_not_consume_it() {
    let (s, _) = store(100, 100);
    let t = issue(&s, &ip(1), 60);
    assert_eq!(s.validate(&t, &ip(2)), Err(TokenError::WrongCaller));
    assert_eq!(
        s.validate(&t, &Identity::Cgroup(1)),
        Err(TokenError::WrongCaller)
    );
    assert_eq!(
        s.validate(&t, &ip(1)),
        Ok(()),
        "the owner's token still works"
    );
}

#[test]
fn malformed_and_oversized_tokens_are_unknown() {
    let (s, _) = store(100, 100);
    let t = issue(&s, &ip(1), 60);
    let huge = "A".repeat(1 << 20);
    let padded = format!("{t}=");
    let spaced = format!(" {t}");
    for bad in ["", "x", "a b", "../../", "ü", &huge, &padded, &spaced] {
        assert_eq!(
            s.validate(bad, &ip(1)),
            Err(TokenError::Unknown),
            "{bad:.20?}"
        );
    }
}

#[test]
fn one_caller_flooding_cannot_evict_another_callers_tokens() {
    let cap = 5;
    let (s, _) = store(100, cap);
    let b_tokens: Vec<String> = (0..cap).map(|_| issue(&s, &ip(2), 60)).collect();
    let a_tokens: Vec<String> = (0..10 * cap).map(|_| issue(&s, &ip(1), 60)).collect();
    for t in &b_tokens {
        assert_eq!(s.validate(t, &ip(2)), Ok(()));
    }
    // A keeps exactly its newest `cap` tokens.
    let (old, new) = a_tokens.split_at(a_tokens.len() - cap);
    for t in old {
        assert_eq!(s.validate(t, &ip(1)), Err(TokenError::Unknown));
    }
    for t in new {
        assert_eq!(s.validate(t, &ip(1)), Ok(()));
    }
    assert_eq!(s.len(), 2 * cap);
}

#[test]
fn global_bound_evicts_least_recently_used() {
    let (s, _) = store(3, 10);
    let t1 = issue(&s, &ip(1), 60);
    let t2 = issue(&s, &ip(2), 60);
    let t3 = issue(&s, &ip(3), 60);
    assert_eq!(
        s.validate(&t1, &ip(1)),
        Ok(()),
        "touch t1 so t2 is least recently used"
    );
    let t4 = issue(&s, &ip(4), 60);
    assert_eq!(s.len(), 3);
    assert_eq!(s.validate(&t2, &ip(2)), Err(TokenError::Unknown));
    for (t, who) in [(&t1, 1), (&t3, 3), (&t4, 4)] {
        assert_eq!(s.validate(t, &ip(who)), Ok(()));
    }
    // The evicted token's caller is not charged for it any more: it can hold its full quota.
    let fresh: Vec<String> = (0..3).map(|_| issue(&s, &ip(2), 60)).collect();
    for t in &fresh {
        assert_eq!(s.validate(t, &ip(2)), Ok(()));
    }
}

#[test]
fn concurrent_issue_and_validate_stay_within_bounds() {
    let (s, _) = store(64, 4);
    let s = Arc::new(s);
    let handles: Vec<_> = (0..8_u8)
        .map(|n| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let t = issue(&s, &ip(n), 60);
                    assert_eq!(s.validate(&t, &ip(n)), Ok(()));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap_or_else(|_| panic!("worker panicked"));
    }
    assert_eq!(s.len(), 8 * 4);
}

#[test]
fn debug_output_is_redacted() {
    let (s, _) = store(10, 10);
    let t = issue(&s, &ip(1), 60);
    let shown = format!("{s:?}");
    assert!(!shown.contains(&t), "{shown}");
    assert!(shown.contains("redacted"));
}

#[test]
fn expiry_at_ttl_minus_one_ttl_and_ttl_plus_one_seconds() {
    let ttl = 300;
    for (elapsed, want) in [
        (ttl - 1, Ok(())),
        (ttl, Err(TokenError::Expired)),
        (ttl + 1, Err(TokenError::Expired)),
    ] {
        let (s, clock) = store(10, 10);
        let t = issue(&s, &ip(1), u32::try_from(ttl).unwrap_or(u32::MAX));
        clock.advance(Duration::from_secs(elapsed));
        assert_eq!(s.validate(&t, &ip(1)), want, "{elapsed} s after issue");
    }
}

#[test]
fn a_caller_at_its_limit_leaves_the_total_to_others() {
    let (s, _) = store(4, 2);
    for _ in 0..100 {
        issue(&s, &ip(1), 60);
    }
    assert_eq!(s.len(), 2, "the flooding caller holds only its own quota");
    let others: Vec<(Identity, String)> = (2..=3).map(|n| (ip(n), issue(&s, &ip(n), 60))).collect();
    for (who, t) in &others {
        assert_eq!(s.validate(t, who), Ok(()), "{who}");
    }
}

#[test]
fn at_its_limit_a_caller_loses_a_used_token_before_one_still_in_flight() {
    // Workers of one caller each PUT then GET; tokens issued meanwhile by the others must not
    // evict a token between its PUT and its first use while used ones can go instead.
    let cap = 4;
    let (s, _) = store(100, cap);
    let in_flight = issue(&s, &ip(1), 60);
    let used: Vec<String> = (0..cap - 1).map(|_| issue(&s, &ip(1), 60)).collect();
    for t in &used {
        assert_eq!(s.validate(t, &ip(1)), Ok(()));
    }
    let newer: Vec<String> = (0..cap - 1).map(|_| issue(&s, &ip(1), 60)).collect();
    assert_eq!(
        s.validate(&in_flight, &ip(1)),
        Ok(()),
        "the unused token survived"
    );
    for t in &used {
        assert_eq!(
            s.validate(t, &ip(1)),
            Err(TokenError::Unknown),
            "used ones went first"
        );
    }
    for t in &newer {
        assert_eq!(s.validate(t, &ip(1)), Ok(()));
    }
    // With nothing used left, the oldest goes: the bound holds for a caller that only issues.
    let (s, _) = store(100, cap);
    let first = issue(&s, &ip(1), 60);
    let rest: Vec<String> = (0..cap).map(|_| issue(&s, &ip(1), 60)).collect();
    assert_eq!(s.validate(&first, &ip(1)), Err(TokenError::Unknown));
    for t in &rest {
        assert_eq!(s.validate(t, &ip(1)), Ok(()));
    }
    assert_eq!(s.len(), cap);
}
