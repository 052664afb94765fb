//! Tests of mapping-file parsing and live reload, with real temporary files.

use std::sync::atomic::{AtomicU32, Ordering};

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::watched::{ErrorChain as Chain, ReloadOutcome};

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "metadataproxy-mapping-{}-{n}.json",
            std::process::id()
        ));
        let file = Self(path);
        file.write(contents);
        file
    }
    fn write(&self, contents: &str) {
        fs::write(&self.0, contents).unwrap_or_else(|e| panic!("write {}: {e}", self.0.display()));
    }
    /// Writes a sibling file and renames it over this one, as config managers do.
    fn replace(&self, contents: &str) {
        let tmp = self.0.with_extension("tmp");
        fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, &self.0).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn ok(json: &str) -> Mapping {
    parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn role_of(mapping: &Mapping, ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
    mapping.lookup_ip(ip).map(|a| a.role.to_string())
}

fn load(file: &TempFile) -> MappingFile {
    MappingFile::load(&file.0).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn parses_all_key_and_value_forms() {
    let m = ok(r#"{
        "172.17.0.2": "web",
        "172.17.0.3": "api@123456789012",
        "172.17.0.4": "worker@prod",
        "172.17.0.5": "arn:aws:iam::123456789012:role/team/batch",
        "172.17.0.6": {"name": "etl", "account_id": "210987654321", "external_id": "tenant-42",
                       "session_name": "etl job", "owner": "data-team"},
        "fd00:dead:beef::2": "v6-role",
        "::ffff:10.1.2.3": "mapped",
        "cgroup:/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope": {"name": "k8s-app"}
    }"#);
    assert_eq!(m.len(), 8);
    assert_eq!(role_of(&m, "172.17.0.2").as_deref(), Some("web"));
    assert_eq!(
        role_of(&m, "172.17.0.3").as_deref(),
        Some("api@123456789012")
    );
    assert_eq!(role_of(&m, "172.17.0.4").as_deref(), Some("worker@prod"));
    assert_eq!(
        role_of(&m, "172.17.0.5").as_deref(),
        Some("arn:aws:iam::123456789012:role/team/batch")
    );
    let etl = m
        .lookup_ip(IpAddr::from([172, 17, 0, 6]))
        .unwrap_or_else(|| panic!("etl missing"));
    assert_eq!(etl.role.to_string(), "etl@210987654321");
    assert_eq!(etl.external_id.as_deref(), Some("tenant-42"));
    assert_eq!(
        etl.session_name
            .as_ref()
            .map(crate::role::SessionName::as_str),
        Some("etl_job")
    );
    assert_eq!(
        role_of(&m, "fd00:dead:beef:0::2").as_deref(),
        Some("v6-role")
    );
    assert_eq!(
        role_of(&m, "10.1.2.3").as_deref(),
        Some("mapped"),
        "v4-mapped key stored as v4"
    );
    assert_eq!(
        role_of(&m, "::ffff:172.17.0.2").as_deref(),
        Some("web"),
        "v4-mapped lookup"
    );
    assert_eq!(role_of(&m, "172.17.0.99"), None);
    let cgroup = m.lookup_cgroup("/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope");
    assert_eq!(
        cgroup.map(|a| a.role.to_string()).as_deref(),
        Some("k8s-app")
    );
    assert!(m.lookup_cgroup("/kubepods.slice").is_none());
    assert!(ok("{}").is_empty());
    assert!(!ok(r#"{"10.0.0.1": "web"}"#).is_empty());
}

#[test]
fn reports_every_bad_entry_at_once() {
    let json = r#"{
        "172.17.0.2": "web",
        "docker-web": "web",
        "172.17.0.3": "my role",
        "172.17.0.4": {"account_id": "123456789012"},
        "cgroup:": "x",
        "172.17.0.5": "web@12345",
        "10.0.0.9": "a",
        "::ffff:10.0.0.9": "b",
        "172.17.0.6": 42
    }"#;
    let Err(MappingError::BadEntries { entries, .. }) = parse(json) else {
        panic!("expected BadEntries");
    };
    let got: Vec<(&str, String)> = entries
        .iter()
        .map(|e| (e.key.as_str(), e.error.to_string()))
        .collect();
    let want = [
        (
            "docker-web",
            "key is neither an IP address nor cgroup:/<path>",
        ),
        (
            "172.17.0.3",
            "role name `my role` contains ` `; IAM allows only A-Z a-z 0-9 + = , . @ _ -",
        ),
        ("172.17.0.4", "object has no `name`"),
        ("cgroup:", "cgroup key needs a path starting with /"),
        (
            "172.17.0.5",
            "account id `12345` in role `web@12345` is not 12 digits",
        ),
        ("::ffff:10.0.0.9", "same caller as key `10.0.0.9`"),
        (
            "172.17.0.6",
            "expected a role string or an object with `name`, found a number",
        ),
    ];
    let want: Vec<(&str, String)> = want.iter().map(|(k, r)| (*k, (*r).to_owned())).collect();
    assert_eq!(got, want);
    let msg = parse(json).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.starts_with("role mapping has 7 invalid entries: `docker-web`: key is"),
        "{msg}"
    );
}

#[test]
fn repeated_json_key_is_reported() {
    let Err(MappingError::BadEntries { entries, .. }) =
        parse(r#"{"10.0.0.1": "a", "10.0.0.1": "b"}"#)
    else {
        panic!("expected BadEntries");
    };
    assert_eq!(
        entries,
        [BadEntry {
            key: "10.0.0.1".into(),
            error: EntryError::Duplicate("10.0.0.1".into())
        }]
    );
}

#[test]
fn bad_json_and_non_objects() {
    assert!(matches!(
        parse("{\n  \"10.0.0.1\": \"web\",\n}"),
        Err(MappingError::Json {
            line: 3,
            column: 1,
            ..
        })
    ));
    assert!(matches!(
        parse(r#"["web"]"#),
        Err(MappingError::NotAnObject {
            found: "an array",
            ..
        })
    ));
    assert!(matches!(parse(""), Err(MappingError::Json { .. })));
}

#[test]
fn load_errors_name_the_file() {
    let missing =
        std::env::temp_dir().join(format!("metadataproxy-missing-{}.json", std::process::id()));
    let err = MappingFile::load(&missing)
        .map(|_| ())
        .expect_err("missing file");
    assert!(
        matches!(&err, MappingError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    );
    assert_eq!(
        err.to_string(),
        format!("cannot read role mapping file `{}`", missing.display())
    );

    let file = TempFile::new("{\n\"10.0.0.1\": web\n}");
    let err = MappingFile::load(&file.0)
        .map(|_| ())
        .expect_err("bad JSON");
    let want = format!(
        "role mapping file `{}` is not valid JSON (line 2, column 13)",
        file.0.display()
    );
    assert_eq!(err.to_string(), want);

    file.write(r#"{"10.0.0.1": "web@"}"#);
    let err = MappingFile::load(&file.0)
        .map(|_| ())
        .expect_err("bad entry");
    assert!(
        err.to_string().contains(&format!(
            "`{}` has 1 invalid entry: `10.0.0.1`: role `web@` has no account",
            file.0.display()
        )),
        "{err}"
    );
}

#[test]
fn reload_picks_up_rewrite_and_rename_replace() {
    let file = TempFile::new(r#"{"10.0.0.1": "one"}"#);
    let mf = load(&file);
    assert!(matches!(mf.reload_if_changed(), ReloadOutcome::Unchanged));
    let before = mf.current();

    file.write(r#"{"10.0.0.1": "two", "10.0.0.2": "three"}"#);
    assert!(matches!(
        mf.reload_if_changed(),
        ReloadOutcome::Reloaded { entries: 2 }
    ));
    assert_eq!(role_of(&mf.current(), "10.0.0.1").as_deref(), Some("two"));
    assert_eq!(
        role_of(&before, "10.0.0.1").as_deref(),
        Some("one"),
        "old snapshot is untouched"
    );

    // Same size, same mtime: only the inode (and ctime) tell the new file apart.
    let mtime = fs::metadata(&file.0)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = file.0.with_extension("tmp");
    fs::write(&tmp, r#"{"10.0.0.1": "TWO", "10.0.0.2": "three"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .unwrap_or_else(|e| panic!("{e}"));
    fs::rename(&tmp, &file.0).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        mf.reload_if_changed(),
        ReloadOutcome::Reloaded { entries: 2 }
    ));
    assert_eq!(role_of(&mf.current(), "10.0.0.1").as_deref(), Some("TWO"));

    // Rewritten with the same bytes: nothing to apply.
    file.replace(r#"{"10.0.0.1": "TWO", "10.0.0.2": "three"}"#);
    assert!(matches!(mf.reload_if_changed(), ReloadOutcome::Unchanged));
}

#[test]
fn broken_rewrite_keeps_last_good() {
    let file = TempFile::new(r#"{"10.0.0.1": "one"}"#);
    let mf = load(&file);
    file.write(r#"{"10.0.0.1": "one", "10.0.0.2": "bad role"}"#);
    assert!(matches!(
        mf.reload_if_changed(),
        ReloadOutcome::Failed(MappingError::BadEntries { .. })
    ));
    assert!(mf.last_check_failed());
    assert_eq!(role_of(&mf.current(), "10.0.0.1").as_deref(), Some("one"));
    assert!(
        matches!(mf.reload_if_changed(), ReloadOutcome::Unchanged),
        "logged once, not on every poll"
    );

    file.replace(r#"{"10.0.0.1": "one""#);
    let ReloadOutcome::Failed(err) = mf.reload_if_changed() else {
        panic!("expected Failed")
    };
    assert!(
        err.to_string().contains(&file.0.display().to_string()),
        "{err}"
    );
    assert_eq!(role_of(&mf.current(), "10.0.0.1").as_deref(), Some("one"));

    file.write(r#"{"10.0.0.1": "fixed"}"#);
    assert!(matches!(
        mf.reload_if_changed(),
        ReloadOutcome::Reloaded { entries: 1 }
    ));
    assert!(!mf.last_check_failed());
}

#[test]
fn deleted_file_keeps_last_good() {
    let file = TempFile::new(r#"{"10.0.0.1": "one"}"#);
    let mf = load(&file);
    fs::remove_file(&file.0).unwrap_or_else(|e| panic!("{e}"));
    let ReloadOutcome::Failed(MappingError::Read { source, .. }) = mf.reload_if_changed() else {
        panic!("expected Failed(Read)");
    };
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    assert_eq!(role_of(&mf.current(), "10.0.0.1").as_deref(), Some("one"));
    assert!(matches!(mf.reload_if_changed(), ReloadOutcome::Unchanged));

    file.write(r#"{"10.0.0.1": "one"}"#);
    assert!(
        matches!(mf.reload_if_changed(), ReloadOutcome::Unchanged),
        "same bytes as in force"
    );
    assert!(!mf.last_check_failed());
    file.write(r#"{"10.0.0.1": "back"}"#);
    assert!(matches!(
        mf.reload_if_changed(),
        ReloadOutcome::Reloaded { entries: 1 }
    ));
}

#[tokio::test]
async fn reloader_task_applies_changes() {
    let file = TempFile::new(r#"{"10.0.0.1": "one"}"#);
    let mf = Arc::new(load(&file));
    let task = Arc::clone(&mf).spawn_reloader(Duration::from_millis(10), |_| {});
    file.replace(r#"{"10.0.0.1": "two"}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while role_of(&mf.current(), "10.0.0.1").as_deref() != Some("two") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reloader did not pick up the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

/// Keys print as they are written in the file (logs and `doctor` name entries by them), IPv4-mapped
/// addresses as the IPv4 address they are matched as.
#[test]
fn keys_print_as_written() {
    for (written, shown) in [
        ("10.0.0.2", "10.0.0.2"),
        ("::ffff:10.0.0.2", "10.0.0.2"),
        ("fd00::2", "fd00::2"),
        ("cgroup:/kubepods.slice/x", "cgroup:/kubepods.slice/x"),
    ] {
        assert_eq!(MappingKey::parse(written).unwrap().to_string(), shown);
    }
}

/// A failed reload is logged with its whole chain of causes on one line.
#[test]
fn an_error_is_logged_with_its_sources_on_one_line() {
    #[derive(Debug)]
    struct Reading(std::io::Error);
    impl std::fmt::Display for Reading {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading /etc/mapping.json")
        }
    }
    impl std::error::Error for Reading {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let error = Reading(std::io::Error::other("device is gone"));
    assert_eq!(
        Chain(&error).to_string(),
        "reading /etc/mapping.json: device is gone"
    );
}
