//! Lyft's `ROLE_MAPPING_FILE`: caller IP (or cgroup path) → role assignment, reloaded while running.
//!
//! Lyft read the file once; here a poller re-reads it when its (mtime, ctime, size, device, inode)
//! changes — so an atomic replace by rename and a Kubernetes `ConfigMap` symlink swap are seen — and
//! applies it only if the bytes differ. A failed reload (bad JSON, bad entry, file gone) keeps the
//! last good mapping in force and is logged once per change of the file.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A parsed mapping: who gets which role.
#[derive(Debug, Default)]
pub struct Mapping {
    // foldhash: looked up on every request of a mapped caller (SipHash cost more than the rest).
    ips: hashbrown::HashMap<IpAddr, Arc<RoleAssignment>>,
    cgroups: hashbrown::HashMap<String, Arc<RoleAssignment>>,
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

    /// Every entry's assignment with its cgroup path (`None` for an address entry).
    pub fn entries(&self) -> impl Iterator<Item = (Option<&str>, &Arc<RoleAssignment>)> {
        let by_ip = self.ips.values().map(|a| (None, a));
        by_ip.chain(self.cgroups.iter().map(|(p, a)| (Some(p.as_str()), a)))
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
        // Valid JSON that is not an object (the only way valid JSON fails here: every object's
        // keys are strings and its values any `Value`), else the syntax error where it is.
        match serde_json::from_slice::<Value>(json) {
            Ok(value) => MappingError::NotAnObject {
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

/// The role mapping file, followed while the daemon runs.
pub type MappingFile = crate::watched::WatchedFile<Mapping>;

impl crate::watched::Watchable for Mapping {
    type Error = MappingError;
    const WHAT: &'static str = "role mapping file";

    fn parse(bytes: &[u8]) -> Result<Self, MappingError> {
        parse_bytes(bytes)
    }

    fn read_error(source: io::Error) -> MappingError {
        MappingError::Read {
            origin: Origin(None),
            source,
        }
    }

    fn with_path(error: MappingError, path: &Path) -> MappingError {
        error.with_path(path)
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

mod source;
pub use source::CgroupSource;

#[cfg(test)]
mod tests;
