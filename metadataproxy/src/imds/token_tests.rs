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
fn when_full_the_caller_holding_the_most_loses_a_token() {
    let (s, _) = store(6, 10);
    let a: Vec<String> = (0..4).map(|_| issue(&s, &ip(1), 60)).collect();
    let b: Vec<String> = (0..2).map(|_| issue(&s, &ip(2), 60)).collect();
    // A is used once: at its turn it loses that one, not its oldest.
    assert_eq!(s.validate(&a[2], &ip(1)), Ok(()));
    let c1 = issue(&s, &ip(3), 60);
    assert_eq!(s.validate(&a[2], &ip(1)), Err(TokenError::Unknown));
    let c2 = issue(&s, &ip(3), 60);
    assert_eq!(s.validate(&a[0], &ip(1)), Err(TokenError::Unknown));
    check(&s);
    // Now A, B and C hold two each: C, tied for the most, loses its own oldest.
    let c3 = issue(&s, &ip(3), 60);
    assert_eq!(s.validate(&c1, &ip(3)), Err(TokenError::Unknown));
    for (t, who) in [
        (&a[1], 1),
        (&a[3], 1),
        (&b[0], 2),
        (&b[1], 2),
        (&c2, 3),
        (&c3, 3),
    ] {
        assert_eq!(s.validate(t, &ip(who)), Ok(()), "{who}");
    }
    assert_eq!(s.len(), 6);
    check(&s);
}

#[test]
fn one_caller_filling_the_store_flushes_only_its_own_tokens() {
    // Regression (issue 11, item 8): the store evicted the least recently used token whoever
    // held it, so one caller issuing in a loop flushed every other caller's tokens.
    let (s, _) = store(8, 100);
    let mine: Vec<String> = (0..3).map(|_| issue(&s, &ip(2), 60)).collect();
    for t in &mine {
        assert_eq!(s.validate(t, &ip(2)), Ok(()));
    }
    for _ in 0..1000 {
        issue(&s, &Identity::Loopback, 60);
    }
    for t in &mine {
        assert_eq!(
            s.validate(t, &ip(2)),
            Ok(()),
            "another caller's token was evicted"
        );
    }
    assert_eq!(s.len(), 8);
    check(&s);
}

#[test]
fn the_evicted_tokens_caller_is_no_longer_charged_for_it() {
    let (s, _) = store(3, 2);
    let a1 = issue(&s, &ip(1), 60);
    let a2 = issue(&s, &ip(1), 60);
    issue(&s, &ip(2), 60);
    // Full: A (two) loses one to B's second.
    issue(&s, &ip(2), 60);
    assert_eq!(s.validate(&a1, &ip(1)), Err(TokenError::Unknown));
    check(&s);
    // A holds one now: its next token (the store full, B holding the most) costs B one, and
    // not A its other one, as it would if A were still charged for the evicted token.
    let a3 = issue(&s, &ip(1), 60);
    assert_eq!(s.validate(&a2, &ip(1)), Ok(()));
    assert_eq!(s.validate(&a3, &ip(1)), Ok(()));
    check(&s);
}

/// Panics unless the store's maps agree: every token is held by its caller in the right set,
/// the counts are each caller's number of tokens, and no caller is kept with none.
fn check(s: &TokenStore) {
    let inner = s.lock();
    let mut counted = 0;
    for (caller, held) in &inner.by_caller {
        assert!(held.len() > 0, "{caller} kept with no token");
        assert!(
            inner.by_count.contains(&(held.len(), caller.clone())),
            "{caller}"
        );
        for (used, set) in [(false, &held.unused), (true, &held.used)] {
            for (seq, token) in set {
                let e = &inner.tokens[token];
                assert_eq!((&e.caller, e.seq, e.used), (caller, *seq, used));
            }
        }
        counted += held.len();
    }
    assert_eq!(counted, inner.tokens.len());
    assert_eq!(inner.by_count.len(), inner.by_caller.len());
    assert!(inner.tokens.len() <= s.max_total);
}

mod model {
    //! The store against an O(n) model of its rules, over random sequences of operations.

    use super::*;
    use proptest::prelude::*;

    /// A token as the model keeps it.
    #[derive(Clone)]
    struct Token {
        text: String,
        caller: Identity,
        seq: u64,
        used: bool,
        expires: u64,
    }

    #[derive(Default)]
    struct Model {
        tokens: Vec<Token>,
        seq: u64,
    }

    impl Model {
        fn count(&self, c: &Identity) -> usize {
            self.tokens.iter().filter(|t| t.caller == *c).count()
        }

        fn evict_from(&mut self, c: &Identity) {
            let victim = |used: bool| {
                self.tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.caller == *c && t.used == used)
                    .min_by_key(|(_, t)| t.seq)
                    .map(|(i, _)| i)
            };
            if let Some(i) = victim(true).or_else(|| victim(false)) {
                self.tokens.remove(i);
            }
        }

        fn issue(&mut self, text: String, c: Identity, per: usize, total: usize, expires: u64) {
            if self.count(&c) >= per {
                self.evict_from(&c);
            }
            if self.tokens.len() >= total {
                let most = self.tokens.iter().map(|t| self.count(&t.caller)).max();
                let victim = if Some(self.count(&c)) == most {
                    Some(c.clone())
                } else {
                    self.tokens
                        .iter()
                        .map(|t| t.caller.clone())
                        .filter(|o| Some(self.count(o)) == most)
                        .max()
                };
                if let Some(v) = victim {
                    self.evict_from(&v);
                }
            }
            self.tokens.push(Token {
                text,
                caller: c,
                seq: self.seq,
                used: false,
                expires,
            });
            self.seq += 1;
        }

        fn validate(&mut self, text: &str, c: &Identity, now: u64) -> Result<(), TokenError> {
            let Some(i) = self.tokens.iter().position(|t| t.text == text) else {
                return Err(TokenError::Unknown);
            };
            if self.tokens[i].caller != *c {
                return Err(TokenError::WrongCaller);
            }
            if now >= self.tokens[i].expires {
                self.tokens.remove(i);
                return Err(TokenError::Expired);
            }
            self.tokens[i].used = true;
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Issue { caller: u8, ttl: u32 },
        Validate { nth: usize, caller: u8 },
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5_u8, 1..40_u32).prop_map(|(caller, ttl)| Op::Issue { caller, ttl }),
            4 => (0..64_usize, 0..5_u8).prop_map(|(nth, caller)| Op::Validate { nth, caller }),
            1 => (1..20_u64).prop_map(Op::Advance),
        ]
    }

    fn who(n: u8) -> Identity {
        match n {
            0 => Identity::Loopback,
            4 => Identity::Cgroup(4),
            n => ip(n),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_store_follows_its_rules(
            total in 1..12_usize,
            per in 1..6_usize,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let (s, clock) = store(total, per);
            let mut model = Model::default();
            let mut issued: Vec<String> = Vec::new();
            let mut now = 0_u64;
            for op in ops {
                match op {
                    Op::Issue { caller, ttl } => {
                        let t = issue(&s, &who(caller), ttl);
                        model.issue(t.clone(), who(caller), per, total, now + u64::from(ttl));
                        issued.push(t);
                    }
                    Op::Validate { nth, caller } => {
                        let Some(t) = issued.get(nth % issued.len().max(1)) else { continue };
                        let got = s.validate(t, &who(caller));
                        prop_assert_eq!(got, model.validate(t, &who(caller), now));
                    }
                    Op::Advance(secs) => {
                        clock.advance(Duration::from_secs(secs));
                        now += secs;
                    }
                }
                check(&s);
                prop_assert_eq!(s.len(), model.tokens.len());
            }
            for t in &model.tokens {
                let inner = s.lock();
                let e = inner.tokens.get(&t.text);
                prop_assert!(e.is_some_and(|e| e.caller == t.caller && e.used == t.used));
            }
        }
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
fn empty_until_a_token_is_issued_and_again_once_it_expired() {
    let (s, clock) = store(4, 4);
    assert!(s.is_empty());
    let t = issue(&s, &ip(1), 1);
    assert!(!s.is_empty());
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.validate(&t, &ip(1)), Err(TokenError::Expired));
    assert!(s.is_empty());
    check(&s);
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
