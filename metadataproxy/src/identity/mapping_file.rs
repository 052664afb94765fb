//! Lyft's `ROLE_MAPPING_FILE`: caller IP (or cgroup path) → role assignment, reloaded while running.
//!
//! Lyft read the file once; here a poller re-reads it when its (mtime, ctime, size, device, inode)
//! changes — so an atomic replace by rename and a Kubernetes `ConfigMap` symlink swap are seen — and
//! applies it only if the bytes differ. A failed reload (bad JSON, bad entry, file gone) keeps the
//! last good mapping in force and is logged once per change of the file.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use thiserror::Error;

use crate::role::{AssignmentError, RoleAssignment, json_type};

/// A mapping-file key: who the entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MappingKey {
    /// A caller IP; IPv4-mapped IPv6 addresses are stored as IPv4.
    Ip(IpAddr),
    /// A cgroup v2 path (`cgroup:/kubepods.slice/…`), matched exactly.
    Cgroup(String),
}

impl MappingKey {
    /// Parses `10.0.0.2`, `fd00::2`, `::ffff:10.0.0.2` or `cgroup:/path`.
    pub fn parse(key: &str) -> Result<MappingKey, EntryError> {
        if let Some(path) = key.strip_prefix("cgroup:") {
            return if path.starts_with('/') {
                Ok(Self::Cgroup(path.to_owned()))
            } else {
                Err(EntryError::CgroupPath)
            };
        }
        key.parse::<IpAddr>()
            .map(|ip| Self::Ip(ip.to_canonical()))
            .map_err(|_| EntryError::BadKey)
    }
}

impl fmt::Display for MappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Cgroup(path) => write!(f, "cgroup:{path}"),
        }
    }
}

/// Why one mapping entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    /// The key is neither an IP address nor `cgroup:/…`.
    #[error("key is neither an IP address nor cgroup:/<path>")]
    BadKey,
    /// A `cgroup:` key without a path starting with `/`.
    #[error("cgroup key needs a path starting with /")]
    CgroupPath,
    /// Two keys name the same caller (a repeated key, or `::ffff:10.0.0.2` and `10.0.0.2`).
    #[error("same caller as key `{0}`")]
    Duplicate(String),
    /// The value is not a valid role assignment.
    #[error(transparent)]
    Value(#[from] AssignmentError),
}

/// One invalid entry: its key as written and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// The JSON key.
    pub key: String,
    /// What is wrong.
    pub error: EntryError,
}

/// Where a mapping came from, for messages: a file, or text given directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(pub Option<PathBuf>);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(path) => write!(f, "role mapping file `{}`", path.display()),
            None => f.write_str("role mapping"),
        }
    }
}

/// Why a role mapping cannot be loaded.
#[derive(Debug, Error)]
pub enum MappingError {
    /// The file cannot be read (missing, permissions, a directory…).
    #[error("cannot read {origin}")]
    Read {
        /// The file.
        origin: Origin,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The text is not JSON.
    #[error("{origin} is not valid JSON (line {line}, column {column})")]
    Json {
        /// The file, if any.
        origin: Origin,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The top level is not an object.
    #[error("{origin} must be a JSON object of caller to role, found {found}")]
    NotAnObject {
        /// The file, if any.
        origin: Origin,
        /// The JSON type found.
        found: &'static str,
    },
    /// Entries are invalid; every one is listed, in file order.
    #[error("{origin} has {} invalid entr{}: {}", .entries.len(), if .entries.len() == 1 { "y" } else { "ies" }, ListBad(.entries))]
    BadEntries {
        /// The file, if any.
        origin: Origin,
        /// Every invalid entry.
        entries: Vec<BadEntry>,
    },
}

impl MappingError {
    fn with_path(mut self, path: &Path) -> Self {
        match &mut self {
            Self::Read { origin, .. }
            | Self::Json { origin, .. }
            | Self::NotAnObject { origin, .. }
            | Self::BadEntries { origin, .. } => origin.0 = Some(path.to_owned()),
        }
        self
    }
}

struct ListBad<'a>(&'a [BadEntry]);

impl fmt::Display for ListBad<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, BadEntry { key, error }) in self.0.iter().enumerate() {
            write!(f, "{}`{key}`: {error}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
    }
}

/// An error and its sources on one line, for logs.
struct Chain<'a>(&'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// A parsed mapping: who gets which role.
#[derive(Debug, Default)]
pub struct Mapping {
    ips: HashMap<IpAddr, Arc<RoleAssignment>>,
    cgroups: HashMap<String, Arc<RoleAssignment>>,
}

impl Mapping {
    /// The assignment for a caller IP (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<Arc<RoleAssignment>> {
        self.ips.get(&ip.to_canonical()).cloned()
    }

    /// The assignment for a cgroup v2 path, matched exactly.
    pub fn lookup_cgroup(&self, path: &str) -> Option<Arc<RoleAssignment>> {
        self.cgroups.get(path).cloned()
    }

    /// Every assignment in the mapping (one per entry; equal roles may repeat).
    pub fn assignments(&self) -> impl Iterator<Item = &Arc<RoleAssignment>> {
        self.ips.values().chain(self.cgroups.values())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ips.len() + self.cgroups.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The top-level object's entries in file order, repeated keys kept (a `Map` would drop them).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Parses a mapping: `{ "<ip>" | "cgroup:/<path>": "role[@account]" | {name, account_id?, external_id?, session_name?} }`.
/// Every invalid entry is reported.
pub fn parse(json: &str) -> Result<Mapping, MappingError> {
    parse_bytes(json.as_bytes())
}

fn parse_bytes(json: &[u8]) -> Result<Mapping, MappingError> {
    let origin = Origin(None);
    let Entries(entries) = serde_json::from_slice(json).map_err(|source| {
        match serde_json::from_slice::<Value>(json) {
            Ok(value) if source.is_data() => MappingError::NotAnObject {
                origin: origin.clone(),
                found: json_type(&value),
            },
            _ => MappingError::Json {
                origin: origin.clone(),
                line: source.line(),
                column: source.column(),
                source,
            },
        }
    })?;
    let mut mapping = Mapping::default();
    let mut first_key: HashMap<MappingKey, String> = HashMap::new();
    let mut bad = Vec::new();
    for (key, value) in entries {
        let parsed = MappingKey::parse(&key).and_then(|k| {
            let assignment = Arc::new(RoleAssignment::from_json(&value, &key)?);
            match first_key.entry(k.clone()) {
                Entry::Occupied(first) => Err(EntryError::Duplicate(first.get().clone())),
                Entry::Vacant(slot) => {
                    slot.insert(key.clone());
                    Ok((k, assignment))
                }
            }
        });
        match parsed {
            // Keys are unique here (duplicates were rejected), so nothing is replaced.
            Ok((MappingKey::Ip(ip), a)) => {
                mapping.ips.insert(ip, a);
            }
            Ok((MappingKey::Cgroup(path), a)) => {
                mapping.cgroups.insert(path, a);
            }
            Err(error) => bad.push(BadEntry { key, error }),
        }
    }
    if bad.is_empty() {
        Ok(mapping)
    } else {
        Err(MappingError::BadEntries {
            origin,
            entries: bad,
        })
    }
}

/// What one reload check did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file looks as at the last check (or its bytes equal the mapping in force).
    Unchanged,
    /// A new mapping is in force.
    Reloaded {
        /// Its number of entries.
        entries: usize,
    },
    /// The file changed but could not be used; the previous mapping stays in force.
    Failed(MappingError),
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File {
        mtime: Option<SystemTime>,
        ctime: (i64, i64),
        size: u64,
        dev: u64,
        ino: u64,
    },
    Error(io::ErrorKind),
}

impl Seen {
    fn of(meta: &io::Result<Metadata>) -> Self {
        match meta {
            Ok(m) => Self::File {
                mtime: m.modified().ok(),
                ctime: (m.ctime(), m.ctime_nsec()),
                size: m.size(),
                dev: m.dev(),
                ino: m.ino(),
            },
            Err(e) => Self::Error(e.kind()),
        }
    }
}

#[derive(Debug)]
struct WatchState {
    seen: Seen,
    /// The bytes of the mapping in force.
    applied: Vec<u8>,
    failed: bool,
}

/// The mapping file and the mapping currently in force; share it in an `Arc`.
#[derive(Debug)]
pub struct MappingFile {
    path: PathBuf,
    current: RwLock<Arc<Mapping>>,
    state: Mutex<WatchState>,
}

impl MappingFile {
    /// Reads and parses the file; the error names the file and, for JSON, the line and column.
    pub fn load(path: impl Into<PathBuf>) -> Result<MappingFile, MappingError> {
        let path = path.into();
        let read_err = |source| MappingError::Read {
            origin: Origin(Some(path.clone())),
            source,
        };
        let meta = fs::metadata(&path);
        let seen = Seen::of(&meta);
        meta.map_err(read_err)?;
        let bytes = fs::read(&path).map_err(read_err)?;
        let mapping = parse_bytes(&bytes).map_err(|e| e.with_path(&path))?;
        tracing::info!(path = %path.display(), entries = mapping.len(), "role mapping file loaded");
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(mapping)),
            state: Mutex::new(WatchState {
                seen,
                applied: bytes,
                failed: false,
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapping in force (a cheap `Arc` clone).
    pub fn current(&self) -> Arc<Mapping> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// True when the last check found the file unusable (the previous mapping is still in force).
    pub fn last_check_failed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
    }

    /// Re-reads the file if its metadata changed and applies it if its bytes changed.
    /// Blocking file I/O: call from a blocking context.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = fs::metadata(&self.path);
        let seen = Seen::of(&meta);
        if seen == state.seen {
            return ReloadOutcome::Unchanged;
        }
        state.seen = seen;
        let bytes = match meta.and_then(|_| fs::read(&self.path)) {
            Ok(bytes) => bytes,
            Err(source) => {
                return self.fail(
                    &mut state,
                    MappingError::Read {
                        origin: Origin(None),
                        source,
                    },
                );
            }
        };
        if bytes == state.applied {
            if state.failed {
                tracing::info!(path = %self.path.display(), "role mapping file is back to the mapping in force");
            }
            state.failed = false;
            return ReloadOutcome::Unchanged;
        }
        match parse_bytes(&bytes) {
            Ok(mapping) => {
                let entries = mapping.len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(mapping);
                state.applied = bytes;
                state.failed = false;
                tracing::info!(path = %self.path.display(), entries, "role mapping file reloaded");
                ReloadOutcome::Reloaded { entries }
            }
            Err(e) => self.fail(&mut state, e),
        }
    }

    fn fail(&self, state: &mut WatchState, error: MappingError) -> ReloadOutcome {
        let error = error.with_path(&self.path);
        state.failed = true;
        tracing::error!(path = %self.path.display(), error = %Chain(&error), "role mapping reload failed; keeping the previous mapping");
        ReloadOutcome::Failed(error)
    }

    /// Checks the file every `every` (at least 1 ms) on the blocking pool, until the task is aborted;
    /// `on_reload` gets each newly applied mapping. Must be called inside a Tokio runtime.
    pub fn spawn_reloader(
        self: Arc<Self>,
        every: Duration,
        on_reload: impl Fn(Arc<Mapping>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate, and the file was just loaded
            loop {
                ticks.tick().await;
                let this = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                    Ok(ReloadOutcome::Reloaded { .. }) => on_reload(self.current()),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(path = %self.path.display(), error = %e, "role mapping reload task failed");
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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
            fs::write(&self.0, contents)
                .unwrap_or_else(|e| panic!("write {}: {e}", self.0.display()));
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
        let cgroup =
            m.lookup_cgroup("/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope");
        assert_eq!(
            cgroup.map(|a| a.role.to_string()).as_deref(),
            Some("k8s-app")
        );
        assert!(m.lookup_cgroup("/kubepods.slice").is_none());
        assert!(ok("{}").is_empty());
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
        let ReloadOutcome::Failed(MappingError::Read { source, .. }) = mf.reload_if_changed()
        else {
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
}
