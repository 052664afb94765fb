//! `EBPF_REDIRECT_HOST=false`: keeping host cgroups out of the redirect, fail closed.
//!
//! The kernel programs skip a connect when the caller's cgroup id is a key of the pinned
//! `MP_EXEMPT` map. This module fills that map with the host cgroups only: a scan walks the cgroup2
//! subtrees of `EBPF_CGROUPS` and exempts every cgroup that the [`RedirectPolicy`] it is given
//! does not keep redirected (the identification side's policy: containers in every layout, and
//! what `cgroup:` keys of `ROLE_MAPPING_FILE` name). It runs once before the programs are
//! attached, then whenever inotify reports a cgroup directory made or removed below the roots, or
//! a change in the folder of the file the policy follows ([`super::cgroup_watch`]), and every
//! [`SAFETY_RESCAN`] in any case. Where inotify is unavailable (watch limit reached) it scans
//! every [`RESCAN`].
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap, MapData};

use super::cgroup_watch::CgroupWatch;
use crate::cgroup::tree;

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

/// Whether the cgroup at a path (below the cgroup2 mount) stays redirected.
pub type Classifier = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Which cgroups `EBPF_REDIRECT_HOST=false` still redirects: the identification side's policy,
/// given to the loader, which knows cgroup ids and maps but not containers or roles.
pub trait RedirectPolicy: Send + std::fmt::Debug {
    /// The policy in force now. `None`: none could ever be had (the role mapping file was never
    /// readable), so no cgroup is known to be a host cgroup and none is exempted.
    fn classifier(&mut self) -> Option<Classifier>;

    /// The file the policy follows, if any: changes in its folder trigger a scan.
    fn watched(&self) -> Option<&Path>;
}

/// Which cgroups below the roots are host cgroups to exempt: the classification half of
/// [`Exempt`], without the map.
#[derive(Debug)]
pub struct HostCgroups {
    cgroup2: PathBuf,
    roots: Vec<String>,
    policy: Box<dyn RedirectPolicy>,
}

impl HostCgroups {
    /// `roots`: the `EBPF_CGROUPS` paths below the cgroup2 mount `cgroup2`.
    pub fn new(cgroup2: PathBuf, roots: Vec<String>, policy: Box<dyn RedirectPolicy>) -> Self {
        Self {
            cgroup2,
            roots,
            policy,
        }
    }

    /// The ids of the host cgroups below the roots now (`None`: the policy is unknown, so none
    /// is a host cgroup for sure).
    pub fn find(&mut self) -> Option<HashSet<u64>> {
        let redirected = self.policy.classifier()?;
        let mut host = HashSet::new();
        for root in &self.roots {
            for (id, path) in tree(&self.cgroup2, root) {
                if !redirected(&path) {
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
                    .policy
                    .watched()
                    .and_then(Path::parent)
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
