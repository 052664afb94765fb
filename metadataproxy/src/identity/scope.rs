//! Which cgroups the redirect covers when host processes are left out (`EBPF_REDIRECT_HOST=false`):
//! a policy of identification (containers, and the cgroups the role mapping names), which the
//! kernel side applies as it is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroup::{ancestors, is_container_path};
use crate::ebpf::{Classifier, RedirectPolicy};

use super::mapping_file::{self, Mapping};

/// Whether `EBPF_REDIRECT_HOST=false` still redirects the cgroup at `path`: it is a container's
/// ([`is_container_path`]), it lies in one of `container_roots` (top-level cgroups a runtime puts
/// containers in whatever their names: containerd's default `/<namespace>/<id>` for the followed
/// `CONTAINERD_NAMESPACES`), or it or an ancestor is named by a `cgroup:` key of `mapping`.
pub fn redirected_without_host(path: &str, mapping: &Mapping, container_roots: &[String]) -> bool {
    is_container_path(path)
        || path
            .split('/')
            .find(|s| !s.is_empty())
            .is_some_and(|top| container_roots.iter().any(|r| r == top))
        || ancestors(path).any(|p| mapping.lookup_cgroup(p).is_some())
}

/// [`redirected_without_host`] as the eBPF loader's [`RedirectPolicy`], following the role
/// mapping file as it changes.
#[derive(Debug)]
pub struct MappingPolicy {
    path: Option<PathBuf>,
    container_roots: Arc<[String]>,
    /// The bytes and parse of the mapping file last read successfully.
    mapping: Option<(Vec<u8>, Arc<Mapping>)>,
}

impl MappingPolicy {
    /// The policy for the mapping file at `path` (`None`: no mapping file) and the
    /// `container_roots` of [`redirected_without_host`].
    pub fn new(path: Option<PathBuf>, container_roots: Vec<String>) -> Self {
        Self {
            path,
            container_roots: container_roots.into(),
            mapping: None,
        }
    }

    /// The mapping in force: re-read when the file's bytes change; an unreadable or invalid file
    /// keeps the previous one (the daemon's reloader reports it). `None` when no mapping could
    /// ever be read.
    fn mapping(&mut self) -> Option<Arc<Mapping>> {
        let Some(path) = &self.path else {
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
}

impl RedirectPolicy for MappingPolicy {
    fn classifier(&mut self) -> Option<Classifier> {
        let mapping = self.mapping()?;
        let roots = Arc::clone(&self.container_roots);
        Some(Arc::new(move |path: &str| {
            redirected_without_host(path, &mapping, &roots)
        }))
    }

    fn watched(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[cfg(test)]
#[path = "scope_tests.rs"]
mod tests;
