//! The log lines of identification refusals, one function per kind, so that every such line is
//! written (and can be rate-limited) in one place. A caller controls how often it is refused:
//! the lines a caller can repeat at will go through a [`Gate`].

use std::net::SocketAddr;

use crate::caller::Identity;

/// Why a caller whose cgroup names a container gets nothing by cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedContainer {
    /// The cgroup is neither the one recorded for that container nor below it: it imitates the
    /// container.
    LookAlike,
    /// The container's own cgroup could not be verified when it was indexed (see the `cannot be
    /// identified by its cgroup` line).
    Unverified,
}

impl NamedContainer {
    fn why(self) -> &'static str {
        match self {
            Self::LookAlike => "but is not that container's cgroup nor below it (a look-alike)",
            Self::Unverified => "whose own cgroup could not be verified",
        }
    }
}

/// A caller's cgroup names a container (`runtime`, `container` named `name`) and gets nothing,
/// for the reason `why`.
pub fn named_container(
    caller: &Identity,
    why: NamedContainer,
    cgroup: &str,
    runtime: &str,
    name: &str,
    container: &str,
    pid: u32,
) {
    crate::refused!(
        WARN,
        caller,
        cgroup,
        runtime,
        container = name,
        id = container,
        pid,
        "refused: the caller's cgroup names a container {}; no credentials",
        why.why()
    );
}

/// A connection that did not come through the eBPF redirect (no kernel record) asked for a route
/// that needs the caller's identity, and its address is not in `EBPF_DIRECT_CALLERS`.
pub fn record_less(caller: &Identity, peer: SocketAddr, route: &'static str) {
    crate::refused!(
        INFO,
        caller,
        %peer,
        route,
        "refused with 403: the connection did not come through the eBPF redirect (no kernel record of its caller), and its address is not in EBPF_DIRECT_CALLERS"
    );
}
