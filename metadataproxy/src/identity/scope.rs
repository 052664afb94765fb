//! Which cgroups the redirect covers when host processes are left out (`EBPF_REDIRECT_HOST=false`):
//! a policy of identification (containers, and the cgroups the role mapping names), which the
//! kernel side applies as it is given.

use crate::cgroup::{ancestors, is_container_path};

use super::mapping_file::Mapping;

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

#[cfg(test)]
#[path = "scope_tests.rs"]
mod tests;
