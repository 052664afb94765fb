//! `EBPF_REDIRECT_HOST=false`: keeping host cgroups out of the redirect, fail closed.
//!
//! The kernel programs skip a connect when the caller's cgroup id is a key of the pinned
//! `MP_EXEMPT` map. This module fills that map with the host cgroups only: a scan walks the cgroup2
//! subtrees of `EBPF_CGROUPS` and exempts every cgroup whose path is neither a container's
//! ([`is_container_path`]: docker, containerd, kubepods, CRI-O, podman, … layouts) nor named (itself
//! or an ancestor) by a `cgroup:` key of `ROLE_MAPPING_FILE`. It runs once before the programs are
//! attached, then whenever inotify reports a cgroup directory made or removed below the roots, or
//! a change in the mapping file's folder ([`super::cgroup_watch`]), and every [`SAFETY_RESCAN`]
//! in any case. Where inotify is unavailable (watch limit reached) it scans every [`RESCAN`].
//!
//! Why a deny-list of host cgroups rather than an allow-list of containers: a cgroup the scan has
//! not seen yet (a container that started a moment ago) is not in the map, so it is redirected. A
//! new container can never reach the real IMDS; the only cost of the delay is the opposite, safe
//! mistake: a brand-new host cgroup (a service just started) is redirected to the daemon until the
//! scan its inotify event triggers (milliseconds). A netns check alone would not do (host-network containers share the host's
//! netns), nor would an ancestor-id check in the kernel (container cgroups sit below host ones).
//!
//! cgroup v2 ids are never reused while the kernel runs, cgroup v2 directories cannot be renamed,
//! and a process leaving a cgroup gets the id of its new one: an exemption stays true for as long
//! as its id exists. Each scan removes the ids that are gone or no longer host cgroups (the mapping
//! file now names them), and the map is pinned, so a restarted daemon reconciles its predecessor's
//! entries. With `EBPF_REDIRECT_HOST=true` the map is emptied at start and never filled. When the
//! map is full, the cgroups that do not fit stay redirected (logged).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap, MapData};

use super::cgroup_watch::CgroupWatch;
use crate::cgroup::tree;
use crate::identity::mapping_file::{self, Mapping};
use crate::identity::redirected_without_host;

/// How often the cgroup tree is scanned when it cannot be watched with inotify.
pub const RESCAN: Duration = Duration::from_secs(1);
/// How often it is scanned anyway while watched (a safety net; events trigger scans at once).
pub const SAFETY_RESCAN: Duration = Duration::from_secs(30);

/// The value stored for an exempt cgroup (the programs test presence only).
const HOST: u32 = 1;

/// What one scan changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Host cgroups now exempt.
    pub exempt: usize,
    /// Exemptions added.
    pub added: usize,
    /// Exemptions removed (cgroup gone, or now a container's or mapped).
    pub removed: usize,
    /// Host cgroups that did not fit in the map (they stay redirected).
    pub full: usize,
}

/// Which cgroups below the roots are host cgroups to exempt: the classification half of
/// [`Exempt`], without the map.
#[derive(Debug)]
pub struct HostCgroups {
    cgroup2: PathBuf,
    roots: Vec<String>,
    /// Top-level cgroups whose every cgroup is a container's (containerd namespaces).
    container_roots: Vec<String>,
    mapping_path: Option<PathBuf>,
    /// The bytes and parse of the mapping file last read successfully.
    mapping: Option<(Vec<u8>, Arc<Mapping>)>,
}

impl HostCgroups {
    /// `roots`: the `EBPF_CGROUPS` paths below the cgroup2 mount `cgroup2`; `container_roots`:
    /// top-level cgroups holding only containers (the followed containerd namespaces).
    pub fn new(
        cgroup2: PathBuf,
        roots: Vec<String>,
        container_roots: Vec<String>,
        mapping_path: Option<PathBuf>,
    ) -> Self {
        Self {
            cgroup2,
            roots,
            container_roots,
            mapping_path,
            mapping: None,
        }
    }

    /// The mapping in force for classification: re-read when the file's bytes change; an unreadable
    /// or invalid file keeps the previous one (the daemon's reloader reports it). `None` when no
    /// mapping could ever be read: then nothing is exempted.
    fn mapping(&mut self) -> Option<Arc<Mapping>> {
        let Some(path) = &self.mapping_path else {
            return Some(Arc::new(Mapping::default()));
        };
        if let Ok(bytes) = std::fs::read(path) {
            let same = self.mapping.as_ref().is_some_and(|(b, _)| *b == bytes);
            if !same
                && let Ok(text) = std::str::from_utf8(&bytes)
                && let Ok(m) = mapping_file::parse(text)
            {
                self.mapping = Some((bytes, Arc::new(m)));
            }
        }
        self.mapping.as_ref().map(|(_, m)| Arc::clone(m))
    }

    /// The ids of the host cgroups below the roots now (`None`: no mapping could ever be read,
    /// so none is a host cgroup for sure).
    pub fn find(&mut self) -> Option<HashSet<u64>> {
        let mapping = self.mapping()?;
        let mut host = HashSet::new();
        for root in &self.roots {
            for (id, path) in tree(&self.cgroup2, root) {
                if !redirected_without_host(&path, &mapping, &self.container_roots) {
                    host.insert(id);
                }
            }
        }
        Some(host)
    }
}

/// What to remove from and add to a map holding `present` so that it holds `host`.
fn reconcile(present: &HashSet<u64>, host: &HashSet<u64>) -> (Vec<u64>, Vec<u64>) {
    (
        present.difference(host).copied().collect(),
        host.difference(present).copied().collect(),
    )
}

/// The pinned `MP_EXEMPT` map and what classifies cgroups into it.
pub struct Exempt {
    map: HashMap<MapData, u64, u32>,
    hosts: HostCgroups,
}

impl std::fmt::Debug for Exempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exempt")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Exempt {
    /// The map, filled by what `hosts` finds.
    pub fn new(map: HashMap<MapData, u64, u32>, hosts: HostCgroups) -> Self {
        Self { map, hosts }
    }

    /// Removes every exemption (`EBPF_REDIRECT_HOST=true`); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let keys: Vec<u64> = self.map.keys().flatten().collect();
        for k in &keys {
            let _ = self.map.remove(k);
        }
        keys.len()
    }

    /// Classifies every cgroup below the roots and brings the map in line.
    pub fn scan(&mut self) -> Scan {
        let found = self.hosts.find();
        let host = found.clone().unwrap_or_default();
        let present: HashSet<u64> = self.map.keys().flatten().collect();
        let (remove, add) = reconcile(&present, &host);
        let mut scan = Scan::default();
        for id in &remove {
            if self.map.remove(id).is_ok() {
                scan.removed += 1;
            }
        }
        for id in add {
            match self.map.insert(id, HOST, 0) {
                Ok(()) => scan.added += 1,
                Err(_) => scan.full += 1,
            }
        }
        scan.exempt = present.intersection(&host).count() + scan.added;
        if scan.full > 0 {
            tracing::warn!(
                not_exempt = scan.full,
                "MP_EXEMPT is full (EBPF_MAP_SIZE): some host cgroups stay redirected"
            );
        }
        if found.is_none() {
            tracing::warn!("the role mapping file is unreadable: no host cgroup is exempted");
        }
        scan
    }

    /// Scans on every change inotify reports (and every [`SAFETY_RESCAN`]; every [`RESCAN`] without
    /// inotify) on a thread of its own, for the life of the process.
    pub fn spawn(mut self) {
        let spawned = std::thread::Builder::new()
            .name("mp-exempt".to_owned())
            .spawn(move || {
                let roots = self
                    .hosts
                    .roots
                    .iter()
                    .map(|r| self.hosts.cgroup2.join(r.trim_start_matches('/')))
                    .collect();
                let mapping_dir = self
                    .hosts
                    .mapping_path
                    .as_ref()
                    .and_then(|p| p.parent())
                    .map(|d| if d.as_os_str().is_empty() { ".".as_ref() } else { d }.to_owned());
                let mut watch = CgroupWatch::new(roots, mapping_dir).map_err(|e| {
                    tracing::warn!(error = %e, rescan = ?RESCAN, "cannot watch the cgroup tree with inotify: scanning it periodically instead");
                }).ok();
                loop {
                    // Watch before scanning: a cgroup made after its parent is watched is reported.
                    if let Some(w) = &watch
                        && let Err(e) = w.watch_all()
                    {
                        tracing::warn!(error = %e, rescan = ?RESCAN, "cannot watch the cgroup tree with inotify: scanning it periodically instead");
                        watch = None;
                    }
                    let scan = self.scan();
                    if scan.added + scan.removed > 0 {
                        tracing::debug!(?scan, "host cgroups exempt from the redirect updated");
                    }
                    match &watch {
                        Some(w) => {
                            if let Err(e) = w.wait(SAFETY_RESCAN) {
                                tracing::warn!(error = %e, rescan = ?RESCAN, "inotify on the cgroup tree failed: scanning it periodically instead");
                                watch = None;
                            }
                        }
                        None => std::thread::sleep(RESCAN),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the cgroup scanner: new host cgroups will be redirected");
        }
    }
}

#[cfg(test)]
#[path = "exempt_tests.rs"]
mod tests;
