//! The mapping file as identification sources: by the caller's IP address, and by its
//! kernel-attested cgroup (`cgroup:/…` keys).

use std::sync::Arc;

use super::MappingFile;
use crate::cgroup::{CgroupPaths, ancestors};
use crate::identity::{Answer, ConnInfo, Found, Identify, Lookup, Source};

/// Identification by cgroup path: the `cgroup:/…` entries of the mapping file, matched against the
/// kernel-attested cgroup of the caller and then its ancestors, deepest first: a key covers its
/// cgroup and every cgroup below it (every descendant directory, at any depth; so
/// `cgroup:/system.slice/foo.service` also covers `…/foo.service/worker`). Whoever may create
/// cgroups below a mapped one (a delegated subtree) can only move its own processes there, which
/// were already entitled; but mapping a subtree delegated to someone (`user@1000.service`, a
/// `Delegate=yes` unit) gives the role to everything they run.
#[derive(Debug)]
pub struct CgroupSource {
    /// cgroup id → path.
    pub paths: Arc<CgroupPaths>,
    /// The mapping file (shared with its reloader).
    pub mapping: Arc<MappingFile>,
}

impl Identify for CgroupSource {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        Lookup::later(async move {
            let path = conn.cgroup_path(&self.paths).await?;
            let mapping = self.mapping.current();
            let found = ancestors(&path).find_map(|p| mapping.lookup_cgroup(p))?;
            Some(Found::new(Answer::Role(found), Source::CgroupPath))
        })
    }
}

/// [`MappingFile`] as an identification source: by the caller's IP address.
impl Identify for MappingFile {
    /// Known at once.
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        let found = self
            .by_ip(conn)
            .map(|(answer, source)| Found::new(answer, source));
        Lookup::Ready(found)
    }
}

impl MappingFile {
    /// The entry for the caller's IP address.
    fn by_ip(&self, conn: &ConnInfo) -> Option<(Answer, Source)> {
        let found = self.current().lookup_ip(conn.peer.ip().to_canonical());
        found.map(|a| (Answer::Role(a), Source::MappingFile))
    }
}
