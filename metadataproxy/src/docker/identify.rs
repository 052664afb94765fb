//! Identification sources backed by the container index: by the kernel-attested cgroup of the
//! caller, by its IP address, and by reverse DNS (`ROLE_REVERSE_LOOKUP`) matched against the
//! containers' `Hostname.Domainname`.
//!
//! `HOSTNAME_MATCH_REGEX` is applied to both names: with a capture group, group 1 of each is
//! compared (Lyft's rule); without one — as in the default `^.*$`, with which Lyft never matched —
//! the whole matches are compared. Names compare without case and without a trailing dot. A name
//! that matches several containers identifies none. Reverse DNS is only as trustworthy as whoever
//! controls the PTR records; prefer the IP lookup (or the cgroup) when possible.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::cgroup::{CgroupPaths, container_of, named_ids};
use crate::containers::{Container, ContainerIndex, START_GRACE, short};
use crate::identity::refusal::NamedContainer;
use crate::identity::{Answer, ConnInfo, Found, Identify, Lookup, Source, refusal};
use futures_util::future::BoxFuture;

/// How long a reverse lookup may take (clients give IMDS about a second in all).
pub const REVERSE_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Finds the caller's container by its source address.
#[derive(Debug, Clone)]
pub struct DockerIp {
    index: Arc<ContainerIndex>,
}

impl DockerIp {
    /// A source reading `index`.
    pub fn new(index: Arc<ContainerIndex>) -> Self {
        Self { index }
    }

    /// The container with the caller's address.
    pub async fn container(&self, conn: &ConnInfo) -> Option<Arc<Container>> {
        let ip = conn.peer.ip().to_canonical();
        match self.index.by_ip(ip) {
            Some(found) => Some(found),
            // No container has a loopback address of its own: nothing to wait for.
            None if ip.is_loopback() => None,
            None => self.index.wait_for(START_GRACE, |i| i.by_ip(ip)).await,
        }
    }
}

impl Identify for DockerIp {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        // A container the index already holds needs no waiting.
        if let Some(found) = self.index.by_ip(conn.peer.ip().to_canonical()) {
            return Lookup::Ready(Some(found.found(Source::DockerIp, conn)));
        }
        Lookup::later(async move {
            let found = self.container(conn).await?;
            Some(found.found(Source::DockerIp, conn))
        })
    }
}

/// Finds the caller's container by the cgroup the kernel recorded for its connection (eBPF
/// redirect): cgroup id → path → the container whose verified cgroup is that path or an ancestor
/// of it. The only way to tell host-network containers and `docker exec` processes apart from
/// the host.
///
/// A name in the path is no proof: a cgroup that names an indexed container (`docker-<id>.scope`,
/// `…/<id>`) anywhere but in or below that container's own cgroup is a look-alike, and is refused
/// (logged; no later source is asked), as is a caller in a container whose cgroup could not be
/// verified when it was indexed, and one whose cgroup names a container while Docker's events are
/// not followed (Docker unreachable, or not synchronised yet): the index cannot vouch for it then.
/// While they are followed, a name the index still does not know after [`START_GRACE`] proves
/// nothing, and the chain goes on.
#[derive(Debug, Clone)]
pub struct DockerCgroup {
    index: Arc<ContainerIndex>,
    paths: Arc<CgroupPaths>,
}

/// What the caller's cgroup says about its Docker container.
#[derive(Debug, Clone)]
pub enum CgroupMatch {
    /// It runs in this container (in its cgroup, or below it).
    In(Arc<Container>),
    /// It names a container it is not in (a look-alike), or one whose cgroup is not verified:
    /// refused, no later source asked.
    Refused,
    /// No record, or not a Docker container's cgroup: ask the next source.
    Unknown,
}

/// What the index says about a cgroup path.
enum Placement {
    In(Arc<Container>),
    /// Names this container, and is refused for this reason.
    Named(Arc<Container>, NamedContainer),
}

impl DockerCgroup {
    /// A source reading `index`, resolving cgroup ids with `paths`.
    pub fn new(index: Arc<ContainerIndex>, paths: Arc<CgroupPaths>) -> Self {
        Self { index, paths }
    }

    /// Where the index places `path`: in a container, or naming one it is not in.
    fn place(index: &ContainerIndex, path: &str) -> Option<Placement> {
        if let Some(found) = index.in_cgroup(path) {
            return Some(Placement::In(found));
        }
        let named = named_ids(path).find_map(|id| index.by_id(id))?;
        Some(match named.cgroup {
            Some(_) => Placement::Named(named, NamedContainer::LookAlike),
            None => Placement::Named(named, NamedContainer::Unverified),
        })
    }

    /// The container of the cgroup the kernel recorded for the caller's connection.
    pub async fn lookup(&self, conn: &ConnInfo) -> CgroupMatch {
        let Some(kernel) = conn.kernel else {
            return CgroupMatch::Unknown;
        };
        let Some(path) = conn.cgroup_path(&self.paths).await else {
            tracing::debug!(
                cgroup_id = kernel.cgroup_id,
                pid = kernel.pid,
                "caller's cgroup is gone"
            );
            return CgroupMatch::Unknown;
        };
        let placed = if let Some(placed) = Self::place(&self.index, &path) {
            placed
        } else {
            let Some(named) = container_of(&path).filter(|c| c.runtime == "docker") else {
                tracing::debug!(cgroup = %path, pid = kernel.pid, "caller's cgroup is no Docker container's");
                return CgroupMatch::Unknown;
            };
            if !self.index.wait_live(START_GRACE).await {
                // Fail closed: while Docker is not followed, the index cannot tell this container
                // (and its role) from a look-alike or a container it has not seen start.
                crate::refused!(ERROR, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, id = short(&named.id), pid = kernel.pid, "caller's cgroup names a Docker container, and Docker's events are not followed: no credentials until they are");
                return CgroupMatch::Refused;
            }
            if self.index.is_unreadable(&named.id) {
                // Fail closed: Docker runs this container but cannot describe it, so its role
                // is unknown, and DEFAULT_ROLE is no answer for a container that may have one.
                crate::refused!(WARN, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, id = short(&named.id), pid = kernel.pid, "caller's cgroup is a Docker container's that Docker cannot describe: no credentials until it can");
                return CgroupMatch::Refused;
            }
            // A cgroup named like a container may be one whose start event is on its way.
            let soon = self
                .index
                .wait_for(START_GRACE, |i| Self::place(i, &path))
                .await;
            let Some(placed) = soon else {
                crate::refused!(INFO, &crate::caller::Identity::Cgroup(kernel.cgroup_id), cgroup = %path, id = short(&named.id), pid = kernel.pid, "caller's cgroup names a Docker container the index does not know");
                return CgroupMatch::Unknown;
            };
            placed
        };
        match placed {
            Placement::In(found) => CgroupMatch::In(found),
            Placement::Named(c, why) => {
                refusal::named_container(
                    &crate::caller::Identity::Cgroup(kernel.cgroup_id),
                    why,
                    &path,
                    "docker",
                    &c.name,
                    &c.id,
                    kernel.pid,
                );
                CgroupMatch::Refused
            }
        }
    }
}

impl Identify for DockerCgroup {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        // An earlier request on this connection looked its cgroup up, and the caller is in a
        // container the index holds: what `lookup` would find first, without waiting.
        if conn.kernel.is_some()
            && let Some(path) = conn.cgroup_path_known()
            && let Some(found) = self.index.in_cgroup(&path)
        {
            return Lookup::Ready(Some(found.found(Source::DockerCgroup, conn)));
        }
        Lookup::later(async move {
            match self.lookup(conn).await {
                CgroupMatch::In(found) => Some(found.found(Source::DockerCgroup, conn)),
                CgroupMatch::Refused => Some(Found::new(Answer::Refused, Source::DockerCgroup)),
                CgroupMatch::Unknown => None,
            }
        })
    }
}

/// The Docker container a caller runs in, found as the identification chain finds it: by the
/// kernel-attested cgroup, else (when containers are identified by address) by its address.
#[derive(Debug, Clone, Default)]
pub struct CallerContainer {
    /// By cgroup (eBPF redirect in force).
    pub by_cgroup: Option<DockerCgroup>,
    /// By address (no `ROLE_MAPPING_FILE`).
    pub by_ip: Option<DockerIp>,
}

impl CallerContainer {
    /// The caller's container, if it is in one the index knows (a look-alike cgroup is in none).
    pub async fn find(&self, conn: &ConnInfo) -> Option<Arc<Container>> {
        if let Some(source) = &self.by_cgroup {
            match source.lookup(conn).await {
                CgroupMatch::In(found) => return Some(found),
                CgroupMatch::Refused => return None,
                CgroupMatch::Unknown => {}
            }
        }
        match &self.by_ip {
            Some(source) => source.container(conn).await,
            None => None,
        }
    }
}

/// Turns an address into a host name.
pub trait ReverseLookup: Send + Sync + fmt::Debug {
    /// The address's name, if it has one (within a bounded time).
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Option<String>>;
}

/// The system resolver (`getnameinfo`, so `/etc/hosts` and DNS alike), on a blocking thread.
#[derive(Debug, Clone, Copy)]
pub struct SystemResolver {
    /// Longest wait for an answer.
    pub timeout: Duration,
}

impl ReverseLookup for SystemResolver {
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&ip));
            match tokio::time::timeout(self.timeout, task).await {
                Ok(Ok(Ok(name))) => Some(name),
                Ok(Ok(Err(e))) => {
                    tracing::debug!(%ip, error = ?e, "no reverse DNS name");
                    None
                }
                Ok(Err(_)) => None,
                Err(_) => {
                    tracing::warn!(%ip, timeout = ?self.timeout, "reverse DNS lookup timed out");
                    None
                }
            }
        })
    }
}

/// The part of `name` that `regex` says identifies it: group 1 when the pattern has a group,
/// else the whole match; lower-case, without a trailing dot.
pub fn match_key(regex: &Regex, name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let caps = regex.captures(name)?;
    let m = if regex.captures_len() > 1 {
        caps.get(1)?
    } else {
        caps.get(0)?
    };
    Some(m.as_str().to_ascii_lowercase())
}

/// Finds the caller's container by reverse DNS of its address.
#[derive(Debug)]
pub struct ReverseDns {
    index: Arc<ContainerIndex>,
    resolver: Box<dyn ReverseLookup>,
    regex: Regex,
}

impl ReverseDns {
    /// A source matching names with `regex` (`HOSTNAME_MATCH_REGEX`).
    pub fn new(index: Arc<ContainerIndex>, resolver: Box<dyn ReverseLookup>, regex: Regex) -> Self {
        Self {
            index,
            resolver,
            regex,
        }
    }

    /// The one container whose name matches `name`.
    fn find(&self, name: &str) -> Option<Arc<Container>> {
        let key = match_key(&self.regex, name)?;
        let mut found = self
            .index
            .matching(|c| match_key(&self.regex, &c.fqdn).is_some_and(|k| k == key));
        match found.len() {
            1 => found.pop(),
            0 => None,
            n => {
                tracing::warn!(
                    name,
                    matches = n,
                    "reverse DNS name matches several containers: it identifies none"
                );
                None
            }
        }
    }
}

impl Identify for ReverseDns {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        Lookup::later(async move {
            if self.index.is_empty() {
                return None;
            }
            let ip = conn.peer.ip().to_canonical();
            let name = self.resolver.lookup(ip).await?;
            let found = self.find(&name)?;
            Some(found.found(Source::ReverseDns, conn))
        })
    }
}

#[cfg(test)]
#[path = "identify_tests.rs"]
mod tests;
