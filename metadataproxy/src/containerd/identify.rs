//! Identification of containerd's containers by the kernel-attested cgroup of the caller: cgroup
//! id → path → the container whose OCI spec put it in that cgroup (or an ancestor of it).
//!
//! Candidates are looked up by key (`namespace/id`), the id taken from the cgroup path (its last
//! segment, or the id in `cri-containerd-<id>.scope`), and accepted only when the container's own
//! cgroup — read from its spec — is exactly that path: a host cgroup that happens to end in a
//! container's name identifies nothing.

use futures_util::FutureExt as _;
use std::sync::Arc;

use super::key;
use crate::creds::sts::BoxFuture;
use crate::docker::{Container, ContainerIndex, ContainerRole, START_GRACE};
use crate::identity::cgroup::{CgroupPaths, ancestors, container_of};
use crate::identity::{Answer, ConnInfo, Found, Identify, Source, Workload};

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
        find(&self.index, &self.namespaces, path)
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

/// See [`ContainerdCgroup::find`].
fn find(index: &ContainerIndex, namespaces: &[String], path: &str) -> Option<Arc<Container>> {
    for dir in ancestors(path).take_while(|p| *p != "/") {
        let last = dir.rsplit('/').next().unwrap_or(dir);
        let scoped = container_of(last).map(|c| c.id);
        for id in std::iter::once(last).chain(scoped.as_deref()) {
            for ns in namespaces {
                if let Some(found) = index.by_id(&key(ns, id))
                    && found.cgroup.as_deref() == Some(dir)
                {
                    return Some(found);
                }
            }
        }
    }
    None
}

impl Identify for ContainerdCgroup {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Option<(Answer, Source)>> {
        Box::pin(
            self.identify_workload(conn)
                .map(|found| found.map(|(answer, source, _)| (answer, source))),
        )
    }

    /// Also names the container (`namespace/id` and its name), for the audit line.
    fn identify_workload<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Option<Found>> {
        Box::pin(async move {
            let kernel = conn.kernel?;
            let path = self.paths.path(kernel.cgroup_id)?;
            let found = match self.find(&path) {
                Some(found) => found,
                None if !self.is_containerd_path(&path) => return None,
                None if !self.index.is_live() => {
                    // Fail closed: this caller's role is only known to containerd.
                    tracing::error!(cgroup = %path, pid = kernel.pid, "caller's cgroup is a containerd container's, and containerd is not reachable: no credentials until it is back");
                    return Some((Answer::Refused, Source::ContainerdCgroup, None));
                }
                None => {
                    // The cgroup proves the container exists: give its start event time to arrive.
                    let soon = self
                        .index
                        .wait_for(START_GRACE, |i| find(i, &self.namespaces, &path))
                        .await;
                    let Some(found) = soon else {
                        tracing::info!(cgroup = %path, pid = kernel.pid, "caller's cgroup looks like a containerd container's, but no followed container has it");
                        return None;
                    };
                    found
                }
            };
            if let ContainerRole::Invalid(e) = &found.role {
                tracing::warn!(container = %found.name, id = %found.id, error = %e, "caller's container has malformed role settings: no credentials");
            }
            let workload = Workload {
                id: found.id.clone(),
                name: found.name.clone(),
            };
            Some((
                found.role.answer(),
                Source::ContainerdCgroup,
                Some(workload),
            ))
        })
    }
}

#[cfg(test)]
#[path = "identify_tests.rs"]
mod tests;
