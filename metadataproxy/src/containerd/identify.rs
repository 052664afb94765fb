//! Identification of containerd's containers by the kernel-attested cgroup of the caller: cgroup
//! id → path → the container whose OCI spec put it in that cgroup or an ancestor of it.
//!
//! Only the cgroup recorded for a container (its spec's `linux.cgroupsPath`) identifies it: a host
//! cgroup that happens to end in a container's name identifies nothing, and one that names a
//! followed container (`cri-containerd-<id>.scope`, `…/<id>`) anywhere else is a look-alike,
//! refused and logged, with no later source asked.

use std::sync::Arc;

use super::key;
use crate::cgroup::{CgroupPaths, container_of, named_ids};
use crate::containers::{Container, ContainerIndex, START_GRACE};
use crate::identity::{Answer, ConnInfo, Found, Identify, Lookup, Source, refusal};

/// Finds the caller's containerd container by its cgroup.
#[derive(Debug, Clone)]
pub struct ContainerdCgroup {
    index: Arc<ContainerIndex>,
    paths: Arc<CgroupPaths>,
    namespaces: Arc<[String]>,
}

impl ContainerdCgroup {
    /// A source reading `index` (kept by the containerd synchroniser for `namespaces`).
    pub fn new(index: Arc<ContainerIndex>, paths: Arc<CgroupPaths>, namespaces: &[String]) -> Self {
        Self {
            index,
            paths,
            namespaces: namespaces.into(),
        }
    }

    /// The indexed container whose cgroup is `path` or its nearest ancestor.
    pub fn find(&self, path: &str) -> Option<Arc<Container>> {
        self.index.in_cgroup(path)
    }

    /// A followed container that `path` names (deepest segment first) without being in it.
    fn imitated(&self, path: &str) -> Option<Arc<Container>> {
        named_ids(path).find_map(|id| {
            self.namespaces
                .iter()
                .find_map(|ns| self.index.by_id(&key(ns, id)))
        })
    }

    /// Whether `path` is laid out the way containerd places containers: a CRI container
    /// (`kubepods…/<id>`, `cri-containerd-<id>.scope`, `k8s.io/<id>`) or the default
    /// `/<namespace>/<id>` of a followed namespace.
    pub fn is_containerd_path(&self, path: &str) -> bool {
        if container_of(path).is_some_and(|c| c.runtime == "containerd") {
            return true;
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        matches!(
            (segments.next(), segments.next()),
            (Some(ns), Some(_)) if self.namespaces.iter().any(|n| n == ns)
        )
    }
}

impl Identify for ContainerdCgroup {
    /// Also names the container (`namespace/id` and its name), for the audit line.
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        Lookup::later(async move {
            let kernel = conn.kernel?;
            let path = conn.cgroup_path(&self.paths).await?;
            let found = if let Some(found) = self.find(&path) {
                found
            } else {
                if let Some(c) = self.imitated(&path) {
                    refusal::named_container(
                        &crate::caller::Identity::Cgroup(kernel.cgroup_id),
                        refusal::NamedContainer::LookAlike,
                        &path,
                        "containerd",
                        &c.name,
                        &c.id,
                        kernel.pid,
                    );
                    return Some(Found::new(Answer::Refused, Source::ContainerdCgroup));
                }
                if !self.is_containerd_path(&path) {
                    return None;
                }
                if !self.index.is_live() {
                    // Fail closed: this caller's role is only known to containerd.
                    crate::refused!(ERROR, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, pid = kernel.pid, "caller's cgroup is a containerd container's, and containerd is not reachable: no credentials until it is back");
                    return Some(Found::new(Answer::Refused, Source::ContainerdCgroup));
                }
                // The cgroup proves the container exists: give its start event time to arrive.
                let soon = self
                    .index
                    .wait_for(START_GRACE, |i| i.in_cgroup(&path))
                    .await;
                let Some(found) = soon else {
                    let unreadable = self.index.unreadable();
                    if unreadable > 0 {
                        // Fail closed: it may be one of the containers containerd runs but
                        // cannot describe (their cgroups are unknown too), whose role is unknown.
                        crate::refused!(WARN, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, pid = kernel.pid, unreadable, "caller's cgroup looks like a containerd container's, but no followed container has it, and containerd cannot describe some it runs: no credentials until it can");
                        return Some(Found::new(Answer::Refused, Source::ContainerdCgroup));
                    }
                    crate::refused!(INFO, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, pid = kernel.pid, "caller's cgroup looks like a containerd container's, but no followed container has it");
                    return None;
                };
                found
            };
            Some(found.found(Source::ContainerdCgroup, conn))
        })
    }
}

#[cfg(test)]
#[path = "identify_tests.rs"]
mod tests;
