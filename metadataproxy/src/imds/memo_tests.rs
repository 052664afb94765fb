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

#[test]
fn another_role_is_not_recalled() {
    let got = remembered_then_recalled(Duration::from_secs(3600), Source::DockerIp, "db", start());
    assert_eq!(got, None);
}

#[test]
fn nothing_is_recalled_after_its_second() {
    let got = remembered_then_recalled(
        Duration::from_secs(3600),
        Source::MappingFile,
        "web",
        start() + TTL,
    );
    assert_eq!(got, None);
}

#[test]
fn nothing_is_recalled_when_the_clock_went_back() {
    let got = remembered_then_recalled(
        Duration::from_secs(3600),
        Source::MappingFile,
        "web",
        start() - Duration::from_millis(1),
    );
    assert_eq!(got, None);
}

#[test]
fn credentials_due_for_refresh_are_not_recalled() {
    // As the cache: strictly more than the threshold left, or the full path.
    let got = remembered_then_recalled(THRESHOLD, Source::MappingFile, "web", start());
    assert_eq!(got, None);
    let got = remembered_then_recalled(
        THRESHOLD + Duration::from_millis(1),
        Source::MappingFile,
        "web",
        start(),
    );
    assert!(got.is_some());
}

#[test]
fn reverse_dns_is_never_remembered() {
    let got = remembered_then_recalled(
        Duration::from_secs(3600),
        Source::ReverseDns,
        "web",
        start(),
    );
    assert_eq!(got, None);
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
