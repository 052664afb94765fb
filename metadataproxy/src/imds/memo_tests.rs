//! A connection's memory: recalled only for the same role, within its second, with nothing
//! changed since and credentials still fresh; never for reverse DNS; no secret in `Debug`.

use super::*;
use crate::creds::{Delivery, Secret};

const THRESHOLD: Duration = Duration::from_secs(300);

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn creds(left: Duration) -> Arc<Credentials> {
    Arc::new(Credentials {
        access_key_id: "ASIAMEMOTEST0001".into(),
        secret_access_key: Secret::new("very-secret-key".into()),
        session_token: Secret::new("very-secret-token".into()),
        expiration: start() + left,
        last_updated: start(),
        assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/web/s".into(),
        assumed_role_id: "AROAEXAMPLE:s".into(),
        delivery: Delivery::default(),
    })
}

/// Remembers `creds` for `web` at `start()` and recalls `asked` at `at`. Other tests bump the
/// shared count at any time: a recall that found it moved is tried again (and must then hold).
fn remembered_then_recalled(
    left: Duration,
    source: Source,
    asked: &str,
    at: SystemTime,
) -> Option<(String, Source)> {
    for _ in 0..100 {
        let memo = Memo::default();
        let noted = Noted::now();
        memo.remember(noted, start(), "web", source, &creds(left));
        let got = memo.recall(asked, at, THRESHOLD, |c, s| (c.access_key_id.clone(), s));
        if noted.0 == crate::generation::current() {
            return got;
        }
    }
    panic!("the count of changes never stood still for one recall");
}

#[test]
fn the_same_role_within_its_second_is_recalled() {
    let got = remembered_then_recalled(
        Duration::from_secs(3600),
        Source::DockerCgroup,
        "web",
        start() + Duration::from_millis(999),
    );
    assert_eq!(
        got,
        Some(("ASIAMEMOTEST0001".to_owned(), Source::DockerCgroup))
    );
}

/// Each way a remembered answer stops holding, against the one case above that holds.
#[test]
fn what_no_longer_holds_is_not_recalled() {
    let hour = Duration::from_secs(3600);
    let cases = [
        ("another role", hour, Source::DockerIp, "db", start()),
        (
            "after its second",
            hour,
            Source::MappingFile,
            "web",
            start() + TTL,
        ),
        (
            "the clock went back",
            hour,
            Source::MappingFile,
            "web",
            start() - Duration::from_millis(1),
        ),
        // As the cache: strictly more than the threshold left, or the full path.
        (
            "due for refresh",
            THRESHOLD,
            Source::MappingFile,
            "web",
            start(),
        ),
        ("reverse DNS", hour, Source::ReverseDns, "web", start()),
    ];
    for (why, left, source, asked, at) in cases {
        assert_eq!(
            remembered_then_recalled(left, source, asked, at),
            None,
            "recalled although {why}"
        );
    }
    let just_fresh = THRESHOLD + Duration::from_millis(1);
    assert!(remembered_then_recalled(just_fresh, Source::MappingFile, "web", start()).is_some());
}

#[test]
fn a_change_anywhere_forgets_it() {
    let memo = Memo::default();
    memo.remember(
        Noted::now(),
        start(),
        "web",
        Source::DockerIp,
        &creds(Duration::from_secs(3600)),
    );
    crate::generation::bump();
    assert_eq!(memo.recall("web", start(), THRESHOLD, |_, s| s), None);
    // Forgotten, not only refused: the connection no longer holds the credentials.
    assert!(memo.0.lock().unwrap().is_none());
}

#[test]
fn a_change_during_the_lookup_is_not_missed() {
    // The count is noted before the lookup: a change while it ran leaves the answer unremembered.
    let memo = Memo::default();
    let noted = Noted::now();
    crate::generation::bump();
    memo.remember(
        noted,
        start(),
        "web",
        Source::DockerCgroup,
        &creds(Duration::from_secs(3600)),
    );
    assert_eq!(memo.recall("web", start(), THRESHOLD, |_, s| s), None);
}

#[test]
fn debug_shows_no_secret() {
    let memo = Memo::default();
    memo.remember(
        Noted::now(),
        start(),
        "web",
        Source::DockerIp,
        &creds(Duration::from_secs(3600)),
    );
    let shown = format!("{memo:?}");
    assert!(shown.contains("ASIAMEMOTEST0001"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
}
