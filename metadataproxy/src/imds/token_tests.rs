//! Tests for `IMDSv2` token issue and validation: sealing, binding to the caller, expiry, and
//! every way of altering a token, driven by a manual clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;

fn ip(last: u8) -> Identity {
    Identity::Ip(IpAddr::V4(Ipv4Addr::new(172, 17, 0, last)))
}

fn tokens() -> (Tokens, ManualClock) {
    tokens_with([7; 16], 0)
}

fn tokens_with(key: [u8; 16], origin: u64) -> (Tokens, ManualClock) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    (
        Tokens::with_key(key, origin, Arc::new(clock.clone())),
        clock,
    )
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
fn a_token_is_48_hex_digits_and_changes_with_time_and_caller() {
    let (s, clock) = tokens();
    let a = s.issue(&ip(1), 60);
    assert_eq!(a.len(), 48);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "{a}"
    );
    assert_ne!(a, s.issue(&ip(2), 60), "another caller");
    assert_ne!(a, s.issue(&ip(1), 61), "another lifetime");
    clock.advance(Duration::from_nanos(1));
    assert_ne!(a, s.issue(&ip(1), 60), "a nanosecond later");
}

#[test]
fn a_new_key_has_a_random_origin_and_never_accepts_an_old_keys_tokens() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
    let first = Tokens::new(Arc::clone(&clock)).unwrap_or_else(|e| panic!("{e}"));
    let second = Tokens::new(clock).unwrap_or_else(|e| panic!("{e}"));
    let t = first.issue(&ip(1), 60);
    assert_eq!(first.validate(&t, &ip(1)), Ok(()));
    // A restarted daemon draws a new key: the tokens of the last run are unknown to it.
    assert_eq!(second.validate(&t, &ip(1)), Err(TokenError::Unknown));
    assert_ne!(
        first.origin, second.origin,
        "the origin is drawn, not fixed"
    );
}

#[test]
fn expiry_is_exact_at_the_boundary() {
    let (s, clock) = tokens();
    let t = s.issue(&ip(1), 10);
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
}

#[test]
fn expiry_holds_across_the_origins_wrap() {
    // The field is origin + nanoseconds, wrapping: an origin just below the top must not turn
    // a live token into an expired one, or an expired one into a live one.
    let (s, clock) = tokens_with([9; 16], u64::MAX - 5);
    let t = s.issue(&ip(1), 1);
    assert_eq!(s.validate(&t, &ip(1)), Ok(()));
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.validate(&t, &ip(1)), Err(TokenError::Expired));
}

#[test]
fn ttl_above_maximum_is_capped() {
    let (s, clock) = tokens();
    let t = s.issue(&ip(1), u32::MAX);
    clock.advance(Duration::from_nanos(
        u64::from(MAX_TTL_SECS) * 1_000_000_000 - 1,
    ));
    assert_eq!(s.validate(&t, &ip(1)), Ok(()));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(s.validate(&t, &ip(1)), Err(TokenError::Expired));
}

#[test]
fn a_token_is_valid_only_for_its_caller() {
    let (s, _) = tokens();
    let v4 = Ipv4Addr::new(172, 17, 0, 1);
    let callers = [
        Identity::Ip(IpAddr::V4(v4)),
        Identity::Ip(IpAddr::V6(v4.to_ipv6_mapped())),
        Identity::Ip(IpAddr::V6(Ipv6Addr::new(0xac11, 1, 0, 0, 0, 0, 0, 0))),
        Identity::Loopback,
        Identity::Cgroup(1),
        Identity::Cgroup(0xac11_0001),
        Identity::Cgroup(u64::MAX),
    ];
    for owner in &callers {
        let t = s.issue(owner, 60);
        for other in &callers {
            let want = if other == owner {
                Ok(())
            } else {
                Err(TokenError::Unknown)
            };
            assert_eq!(
                s.validate(&t, other),
                want,
                "{owner}'s token, presented by {other}"
            );
        }
    }
}

#[test]
fn identity_encodings_are_distinct() {
    let mut seen = std::collections::HashSet::new();
    let v4 = Ipv4Addr::new(1, 2, 3, 4);
    for id in [
        Identity::Ip(IpAddr::V4(v4)),
        Identity::Ip(IpAddr::V6(v4.to_ipv6_mapped())),
        Identity::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        Identity::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Identity::Loopback,
        Identity::Cgroup(0),
        Identity::Cgroup(0x0403_0201),
    ] {
        assert!(seen.insert(identity_bytes(&id)), "{id} shares an encoding");
    }
}

#[test]
fn an_expired_token_of_another_caller_is_unknown_not_expired() {
    // What a refusal says must not depend on another caller's token being real.
    let (s, clock) = tokens();
    let t = s.issue(&ip(1), 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(s.validate(&t, &ip(2)), Err(TokenError::Unknown));
    assert_eq!(s.validate(&t, &ip(1)), Err(TokenError::Expired));
}

#[test]
fn every_altered_character_makes_a_token_unknown() {
    let (s, _) = tokens();
    let t = s.issue(&ip(1), 60);
    let alphabet = b"0123456789abcdefABCDEFgxz-_ ";
    for i in 0..t.len() {
        for &c in alphabet {
            let mut altered = t.clone().into_bytes();
            if altered[i].eq_ignore_ascii_case(&c) {
                continue;
            }
            altered[i] = c;
            let altered = String::from_utf8(altered).unwrap_or_default();
            assert_eq!(
                s.validate(&altered, &ip(1)),
                Err(TokenError::Unknown),
                "{t} with character {i} made {}",
                char::from(c)
            );
        }
    }
}

#[test]
fn malformed_and_oversized_tokens_are_unknown() {
    let (s, _) = tokens();
    let t = s.issue(&ip(1), 60);
    let huge = "A".repeat(1 << 20);
    let padded = format!("{t}=");
    let spaced = format!(" {t}");
    let short = &t[..TOKEN_LEN - 1];
    let prefixed = format!("0x{}", &t[2..]);
    let zeros = "0".repeat(TOKEN_LEN);
    let wide = "é".repeat(TOKEN_LEN / 2);
    let bad: Vec<&str> = vec![
        "", "x", "a b", "../../", "ü", &huge, &padded, &spaced, short, &zeros, &prefixed, &wide,
    ];
    for bad in bad {
        assert_eq!(
            s.validate(bad, &ip(1)),
            Err(TokenError::Unknown),
            "{bad:.40?}"
        );
    }
    // A header's bytes need not be text.
    let mut raw = t.into_bytes();
    raw[0] = 0xff;
    assert_eq!(s.validate(&raw, &ip(1)), Err(TokenError::Unknown));
}

#[test]
fn the_upper_case_spelling_is_the_same_token_for_the_same_caller_only() {
    let (s, _) = tokens();
    let t = s.issue(&ip(1), 60).to_uppercase();
    assert_eq!(s.validate(&t, &ip(1)), Ok(()));
    assert_eq!(s.validate(&t, &ip(2)), Err(TokenError::Unknown));
}

#[test]
fn a_flood_of_tokens_leaves_every_other_token_valid() {
    let (s, _) = tokens();
    let mine = s.issue(&ip(2), 60);
    for _ in 0..10_000 {
        s.issue(&ip(1), 60);
    }
    assert_eq!(s.validate(&mine, &ip(2)), Ok(()));
}

#[test]
fn concurrent_issue_and_validate() {
    let (s, _) = tokens();
    let s = Arc::new(s);
    let handles: Vec<_> = (0..8_u8)
        .map(|n| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let t = s.issue(&ip(n), 60);
                    assert_eq!(s.validate(&t, &ip(n)), Ok(()));
                    assert_eq!(s.validate(&t, &ip(n + 100)), Err(TokenError::Unknown));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap_or_else(|_| panic!("worker panicked"));
    }
}

#[test]
fn debug_output_shows_no_key() {
    let (s, _) = tokens_with([0xab; 16], 0);
    let shown = format!("{s:?}");
    assert!(!shown.contains("171"), "{shown}");
    assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

#[test]
fn expiry_at_ttl_minus_one_ttl_and_ttl_plus_one_seconds() {
    let ttl = 300;
    for (elapsed, want) in [
        (ttl - 1, Ok(())),
        (ttl, Err(TokenError::Expired)),
        (ttl + 1, Err(TokenError::Expired)),
    ] {
        let (s, clock) = tokens();
        let t = s.issue(&ip(1), u32::try_from(ttl).unwrap_or(u32::MAX));
        clock.advance(Duration::from_secs(elapsed));
        assert_eq!(s.validate(&t, &ip(1)), want, "{elapsed} s after issue");
    }
}

fn identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        any::<u64>().prop_map(Identity::Cgroup),
        any::<[u8; 4]>().prop_map(|o| Identity::Ip(IpAddr::V4(o.into()))),
        any::<[u8; 16]>().prop_map(|o| Identity::Ip(IpAddr::V6(o.into()))),
        Just(Identity::Loopback),
    ]
}

proptest! {
    /// Against an independent statement of the rule: a token is accepted exactly when it is
    /// presented by the caller it was issued to, before issue + lifetime.
    #[test]
    fn a_token_is_accepted_only_by_its_caller_before_its_expiry(
        key in any::<[u8; 16]>(),
        origin in any::<u64>(),
        owner in identity(),
        presenter in identity(),
        ttl in 1..=MAX_TTL_SECS,
        before in 0..u64::from(MAX_TTL_SECS) * 2,
        after in 0..u64::from(MAX_TTL_SECS) * 2,
    ) {
        let (s, clock) = tokens_with(key, origin);
        clock.advance(Duration::from_secs(before));
        let t = s.issue(&owner, ttl);
        clock.advance(Duration::from_secs(after));
        let want = if presenter != owner {
            Err(TokenError::Unknown)
        } else if after >= u64::from(ttl) {
            Err(TokenError::Expired)
        } else {
            Ok(())
        };
        prop_assert_eq!(s.validate(&t, &presenter), want);
    }

    /// Any string that is not a token issued to the caller is refused.
    #[test]
    fn made_up_tokens_are_refused(text in "[A-Za-z0-9_-]{0,40}", who in identity()) {
        let (s, _) = tokens();
        let issued = s.issue(&who, 60);
        prop_assume!(text != issued);
        prop_assert_eq!(s.validate(&text, &who), Err(TokenError::Unknown));
    }
}
