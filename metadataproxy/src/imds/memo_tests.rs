//! A connection's memory: recalled only for the same role, within its second, with nothing
//! changed since and credentials still fresh; never for reverse DNS; no secret in `Debug`.

use super::*;
use crate::creds::{Delivery, Secret};

const THRESHOLD: Duration = Duration::from_secs(300);

/// The wall clock when the request began.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn creds(left: Duration) -> Arc<Credentials> {
    Arc::new(Credentials {
        access_key_id: "ASIAMEMOTEST0001".into(),
        secret_access_key: Secret::new("very-secret-key".into()),
        session_token: Secret::new("very-secret-token".into()),
        expiration: wall() + left,
        last_updated: wall(),
        assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/web/s".into(),
        assumed_role_id: "AROAEXAMPLE:s".into(),
        delivery: Delivery::default(),
    })
}

/// A request that began at `began` remembers `creds(left)` for `web` after a lookup of `took`,
/// and a later one asks for `asked` `after` the first began. Other tests bump the shared count
/// at any time: a recall that found it moved is tried again (and must then hold).
fn remembered_then_recalled(
    (left, took): (Duration, Duration),
    source: Source,
    asked: &str,
    after: Duration,
) -> Option<(String, Source)> {
    for _ in 0..100 {
        let memo = Memo::default();
        let began = Instant::now();
        let noted = Noted::now(began);
        memo.remember(noted, wall() + took, THRESHOLD, "web", source, &creds(left));
        let got = memo.recall(asked, began + after, |c, s| (c.access_key_id.clone(), s));
        if noted.count == crate::generation::current() {
            return got;
        }
    }
    panic!("the count of changes never stood still for one recall");
}

const HOUR: (Duration, Duration) = (Duration::from_secs(3600), Duration::ZERO);

#[test]
fn the_same_role_within_its_second_is_recalled() {
    let got = remembered_then_recalled(
        HOUR,
        Source::DockerCgroup,
        "web",
        Duration::from_millis(999),
    );
    assert_eq!(
        got,
        Some(("ASIAMEMOTEST0001".to_owned(), Source::DockerCgroup))
    );
}

/// Each way a remembered answer stops holding, against the cases beside them that hold.
#[test]
fn what_no_longer_holds_is_not_recalled() {
    let ms = Duration::from_millis;
    // Due for refresh 500 ms after the request began, found by a lookup of 300 ms: the freshness
    // is counted from when the request began, so the memory ends at 200 ms, not later.
    let due_soon = (THRESHOLD + ms(500), ms(300));
    let cases = [
        ("another role", HOUR, Source::DockerIp, "db", ms(0), false),
        (
            "after its second",
            HOUR,
            Source::MappingFile,
            "web",
            TTL,
            false,
        ),
        // As the cache: strictly more than the threshold left, or the full path.
        (
            "due for refresh",
            (THRESHOLD, Duration::ZERO),
            Source::MappingFile,
            "web",
            ms(0),
            false,
        ),
        ("reverse DNS", HOUR, Source::ReverseDns, "web", ms(0), false),
        (
            "due later",
            due_soon,
            Source::MappingFile,
            "web",
            ms(199),
            true,
        ),
        (
            "due by then",
            due_soon,
            Source::MappingFile,
            "web",
            ms(200),
            false,
        ),
        (
            "just fresh",
            (THRESHOLD + ms(1), Duration::ZERO),
            Source::MappingFile,
            "web",
            ms(0),
            true,
        ),
    ];
    for (why, creds, source, asked, after, recalled) in cases {
        assert_eq!(
            remembered_then_recalled(creds, source, asked, after).is_some(),
            recalled,
            "{why}"
        );
    }
}

#[test]
fn a_change_anywhere_forgets_it() {
    let memo = Memo::default();
    memo.remember(
        Noted::now(Instant::now()),
        wall(),
        THRESHOLD,
        "web",
        Source::DockerIp,
        &creds(Duration::from_secs(3600)),
    );
    crate::generation::bump();
    assert_eq!(memo.recall("web", Instant::now(), |_, s| s), None);
    // Forgotten, not only refused: the connection no longer holds the credentials.
    assert!(memo.0.lock().unwrap().is_none());
}

#[test]
fn a_change_during_the_lookup_is_not_missed() {
    // The count is noted before the lookup: a change while it ran leaves the answer unremembered.
    let memo = Memo::default();
    let noted = Noted::now(Instant::now());
    crate::generation::bump();
    memo.remember(
        noted,
        wall(),
        THRESHOLD,
        "web",
        Source::DockerCgroup,
        &creds(Duration::from_secs(3600)),
    );
    assert_eq!(memo.recall("web", Instant::now(), |_, s| s), None);
}

#[test]
fn debug_shows_no_secret() {
    let memo = Memo::default();
    memo.remember(
        Noted::now(Instant::now()),
        wall(),
        THRESHOLD,
        "web",
        Source::DockerIp,
        &creds(Duration::from_secs(3600)),
    );
    let shown = format!("{memo:?}");
    assert!(shown.contains("ASIAMEMOTEST0001"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
}
