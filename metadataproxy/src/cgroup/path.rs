//! cgroup v2 paths, segment by segment: which container a path names, whether a path lies in a
//! cgroup, which paths are containers'.

/// A container found in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// Which layout named it: `docker`, `containerd`, `crio`, `podman`.
    pub runtime: &'static str,
    /// The 64-hex-digit container id.
    pub id: String,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Runtime scopes: `<prefix><id>.scope` (or without `.scope`), and the runtime they belong to.
const SCOPES: &[(&str, &str)] = &[
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("containerd-", "containerd"),
    ("nerdctl-", "containerd"),
    ("crio-", "crio"),
    ("libpod-", "podman"),
];

/// The container id one path segment names: a bare 64-hex id, or one in a runtime's scope
/// (`docker-<id>.scope`, …); with the runtime of the scope (`None` for a bare id).
fn segment_id(seg: &str) -> Option<(&str, Option<&'static str>)> {
    let bare = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in SCOPES {
        if let Some(id) = bare.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id, Some(runtime)));
        }
    }
    is_container_id(bare).then_some((bare, None))
}

/// Every container id named by a segment of `path`, deepest first (whatever the runtime).
pub fn named_ids(path: &str) -> impl Iterator<Item = &str> {
    path.rsplit('/').filter_map(segment_id).map(|(id, _)| id)
}

/// The container of a cgroup path, from its deepest segment naming one:
/// cgroupfs `docker/<id>`, systemd `docker-<id>.scope`, containerd `cri-containerd-<id>.scope`,
/// `nerdctl-<id>.scope` or `<pod>/<id>` (kubepods, `k8s.io`), CRI-O `crio-<id>.scope`, podman
/// `libpod-<id>.scope`. A name is only a claim: identification accepts a caller only in the
/// cgroup recorded for the container ([`is_within`]).
pub fn container_of(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segments.iter().enumerate().rev() {
        let Some((id, scoped)) = segment_id(seg) else {
            continue;
        };
        let runtime = scoped.unwrap_or_else(|| match i.checked_sub(1).map(|p| segments[p]) {
            Some("docker") => "docker",
            Some("k8s.io" | "moby") => "containerd",
            _ if segments.iter().any(|s| s.starts_with("kubepods")) => "containerd",
            _ => "docker",
        });
        return Some(ContainerRef {
            runtime,
            id: id.to_owned(),
        });
    }
    None
}

/// The cgroup v2 path of a process: the `0::/path` entry of its `/proc/<pid>/cgroup`, if any.
pub fn v2_path(cgroups: &procfs::ProcessCGroups) -> Option<&str> {
    cgroups
        .0
        .iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
        .map(|c| c.pathname.as_str())
}

/// Whether the cgroup at `path` is `cgroup` itself or lies below it, compared segment by segment
/// (`/a/bc` is not below `/a/b`). Paths are relative to the cgroup2 mount and start with `/`.
pub fn is_within(path: &str, cgroup: &str) -> bool {
    let cgroup = cgroup.trim_end_matches('/');
    if cgroup.is_empty() {
        return path.starts_with('/');
    }
    path.strip_prefix(cgroup)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Segments that only container runtimes and container managers create: a cgroup at or below one
/// is a container's (or about to hold one), even when no segment names a container id yet.
fn is_runtime_segment(seg: &str) -> bool {
    const EXACT: &[&str] = &[
        "docker",
        "moby",
        "k8s.io",
        "containerd",
        "libpod_parent",
        "machine.slice",
        "machine",
        "lxc",
        "ecs",
        "garden",
    ];
    const PREFIXES: &[&str] = &["kubepods", "crio", "lxc.payload", "libpod", "podman"];
    EXACT.contains(&seg) || PREFIXES.iter().any(|p| seg.starts_with(p))
}

/// Whether the cgroup at `path` belongs to a container: some segment names a container
/// ([`container_of`]) or is a runtime's own parent (`docker`, `kubepods…`, `machine.slice`, …).
/// In doubt the answer is yes: a container cgroup is redirected, and wrongly redirecting a host
/// process is the safe mistake (it reaches the daemon, never a container the real IMDS).
pub fn is_container_path(path: &str) -> bool {
    container_of(path).is_some()
        || path
            .split('/')
            .filter(|s| !s.is_empty())
            .any(is_runtime_segment)
}

/// `path` and its ancestors, deepest first, ending with `/`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            Some(0) if current.len() > 1 => Some("/"),
            Some(i) if i > 0 => Some(&current[..i]),
            _ => None,
        };
        Some(current)
    })
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
