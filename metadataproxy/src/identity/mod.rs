//! Who is calling: the identity of a connection and the role assignment it maps to.
//!
//! Every source (cgroup paths of the mapping file, Docker containers by cgroup, by IP and by
//! reverse DNS, the mapping file by IP) implements [`Identify`]; a [`Chain`] asks them in order,
//! then falls back to `DEFAULT_ROLE`.

pub mod mapping_file;
pub mod refusal;
mod scope;

pub use scope::{MappingPolicy, redirected_without_host};

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::caller::Identity;
use crate::role::{RoleAssignment, Session};
use futures_util::future::BoxFuture;

/// What the socket layer knows about one accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The caller's address as seen by `accept()`.
    pub peer: SocketAddr,
    /// Our address the caller connected to.
    pub local: SocketAddr,
    /// What the kernel recorded when the caller's connection was redirected (eBPF mode).
    pub kernel: Option<crate::caller::KernelRecord>,
    /// Who the caller is: the recorded cgroup, else the peer address (computed once, at accept).
    identity: Identity,
    /// The path of the kernel-recorded cgroup, looked up once for the connection when first
    /// needed (shared by its clones, so by every request and source on the connection).
    cgroup: Arc<tokio::sync::OnceCell<Option<Arc<str>>>>,
}

impl ConnInfo {
    /// A connection from `peer` to `local`, with the kernel's record of it if there is one.
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        kernel: Option<crate::caller::KernelRecord>,
    ) -> Self {
        let identity = match kernel {
            Some(k) => Identity::Cgroup(k.cgroup_id),
            None => Identity::from_peer(peer),
        };
        Self {
            peer,
            local,
            kernel,
            identity,
            cgroup: Arc::default(),
        }
    }

    /// The caller's identity, without looking up its role (what tokens, connection limits and
    /// log lines are keyed by): the cgroup the kernel recorded when known, else the peer
    /// address ([`Identity::from_peer`]).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The path of the cgroup the kernel recorded for this connection (`None`: no record, or the
    /// cgroup is gone), resolved with `paths` at most once per connection.
    /// The path of the kernel-recorded cgroup if an earlier request on this connection already
    /// looked it up (`None`: not yet, or no record).
    pub fn cgroup_path_known(&self) -> Option<Arc<str>> {
        self.cgroup.get().cloned().flatten()
    }

    pub async fn cgroup_path(&self, paths: &crate::cgroup::CgroupPaths) -> Option<Arc<str>> {
        let kernel = self.kernel?;
        self.cgroup
            .get_or_init(|| paths.resolve(kernel.cgroup_id))
            .await
            .clone()
    }
}

/// Which source identified a caller (for logs, audit and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An entry of `ROLE_MAPPING_FILE`.
    MappingFile,
    /// A `cgroup:/path` entry of `ROLE_MAPPING_FILE`, matched by the kernel-attested cgroup.
    CgroupPath,
    /// `DEFAULT_ROLE`, because no source knew the caller.
    DefaultRole,
    /// A running Docker container, found by the kernel-attested cgroup of the caller.
    DockerCgroup,
    /// A running Docker container, found by the caller's IP address.
    DockerIp,
    /// A running containerd container (a Kubernetes pod's included), found by the caller's cgroup.
    ContainerdCgroup,
    /// A running Docker container whose `Hostname.Domainname` matches the caller's reverse DNS.
    ReverseDns,
}

impl crate::metrics::Label for Source {
    fn label(self) -> &'static str {
        self.as_str()
    }

    fn slot(self) -> usize {
        self as usize
    }
}

// Every source, and "none", has a slot of its own in the identification metrics.
const _: () = assert!(Source::ReverseDns as usize + 2 == crate::metrics::SOURCES);

impl Source {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MappingFile => "mapping_file",
            Self::CgroupPath => "cgroup_path",
            Self::DefaultRole => "default_role",
            Self::DockerCgroup => "docker_cgroup",
            Self::DockerIp => "docker_ip",
            Self::ContainerdCgroup => "containerd_cgroup",
            Self::ReverseDns => "reverse_dns",
        }
    }
}

/// Who chose the role a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignedBy {
    /// The workload itself: its container's `IAM_ROLE`, role label, or its pod's annotation.
    Workload,
    /// An entry of `ROLE_MAPPING_FILE` (an operator).
    MappingFile,
    /// `DEFAULT_ROLE` (an operator).
    DefaultRole,
}

impl AssignedBy {
    /// Stable lower-case name, as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::MappingFile => "mapping_file",
            Self::DefaultRole => "default_role",
        }
    }
}

/// A caller, identified, with the role it is entitled to (if any).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who it is.
    pub identity: Identity,
    /// The role it may have, and which source said so; `None`: no credentials for it.
    pub assignment: Option<(Arc<RoleAssignment>, Source)>,
    /// Who chose that role (for the role policy).
    pub assigned_by: AssignedBy,
    /// The container it runs in, when the source that identified it found one.
    pub workload: Option<Arc<Workload>>,
}

/// The container a caller runs in: for the audit log and the role policy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The container's full id.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// Its image, as the runtime reports it.
    pub image: String,
    /// Its labels (a Kubernetes pod's containers carry the pod's namespace, name and uid).
    pub labels: std::collections::HashMap<String, String>,
}

/// Labels may hold anything: `Debug` counts them.
impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("labels", &format_args!("[{} labels]", self.labels.len()))
            .finish()
    }
}

/// What a source found.
#[derive(Debug, Clone)]
pub struct Found {
    /// What the caller is entitled to.
    pub answer: Answer,
    /// Which source says so.
    pub source: Source,
    /// The caller's container, when the source found the caller through one.
    pub workload: Option<Arc<Workload>>,
}

impl Found {
    /// `answer`, from `source`, which knows no container.
    pub fn new(answer: Answer, source: Source) -> Self {
        Self {
            answer,
            source,
            workload: None,
        }
    }
}

/// What a source that recognised a caller says it is entitled to.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This role.
    Role(Arc<RoleAssignment>),
    /// `DEFAULT_ROLE` (if set), with the caller's session name, tags and source identity.
    DefaultRole(Session),
    /// Nothing, and no later source is asked (e.g. a container with malformed settings).
    Refused,
}

/// One way of finding the role of a connection.
pub trait Identify: Send + Sync + fmt::Debug {
    /// What this source knows of the caller on this connection; `None`: ask the next source.
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a>;
}

/// A source's answer: known at once, or after waiting.
pub enum Lookup<'a> {
    /// Known at once: nothing allocated, nothing awaited (an index or a mapping looked up).
    Ready(Option<Found>),
    /// Known after waiting: a cgroup path to read, a runtime to hear from, a name to resolve.
    Later(BoxFuture<'a, Option<Found>>),
}

impl<'a> Lookup<'a> {
    /// An answer that needs waiting for.
    pub fn later(answer: impl Future<Output = Option<Found>> + Send + 'a) -> Self {
        Self::Later(Box::pin(answer))
    }

    /// The answer.
    pub async fn get(self) -> Option<Found> {
        match self {
            Self::Ready(found) => found,
            Self::Later(found) => found.await,
        }
    }
}

impl fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(found) => f.debug_tuple("Ready").field(found).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Which connections without a kernel record (callers that reached the daemon straight, not
/// through the eBPF redirect) may be identified by their address.
#[derive(Debug, Clone, Default)]
pub enum AddressIdentity {
    /// IP-only mode (no redirect attached): every caller is known by its address.
    #[default]
    Everyone,
    /// The redirect is attached: only peers in these networks (`EBPF_DIRECT_CALLERS`); any
    /// other connection without a record is refused the routes that need an identity.
    Only(Arc<[ipnet::IpNet]>),
}

impl AddressIdentity {
    /// Whether the caller on `conn` may be identified at all: it has a kernel record, or its
    /// address may identify it.
    pub fn allows(&self, conn: &ConnInfo) -> bool {
        conn.kernel.is_some()
            || match self {
                Self::Everyone => true,
                Self::Only(nets) => {
                    let ip = conn.peer.ip().to_canonical();
                    nets.iter().any(|net| net.contains(&ip))
                }
            }
    }
}

/// The sources in order; the first that knows the caller wins, then `DEFAULT_ROLE`.
#[derive(Debug, Default)]
pub struct Chain {
    sources: Vec<Box<dyn Identify>>,
    default_role: Option<Arc<RoleAssignment>>,
    by_address: AddressIdentity,
}

impl Chain {
    /// A chain of `sources`, falling back to `default_role`; every caller may be identified
    /// (see [`Chain::with_address_identity`]).
    pub fn new(sources: Vec<Box<dyn Identify>>, default_role: Option<RoleAssignment>) -> Self {
        Self {
            sources,
            default_role: default_role.map(Arc::new),
            by_address: AddressIdentity::Everyone,
        }
    }

    /// This chain, identifying connections without a kernel record only as `by_address` says.
    #[must_use]
    pub fn with_address_identity(mut self, by_address: AddressIdentity) -> Self {
        self.by_address = by_address;
        self
    }

    /// Whether the caller on `conn` may be identified (see [`AddressIdentity::allows`]): the
    /// routes that need an identity (credentials, `iam/*`, tokens, ECS) refuse it otherwise.
    pub fn may_identify(&self, conn: &ConnInfo) -> bool {
        self.by_address.allows(conn)
    }

    /// Identifies the caller and finds its role; one that may not be identified
    /// ([`Chain::may_identify`]) has none.
    pub async fn identify(&self, conn: &ConnInfo) -> Caller {
        let identity = conn.identity().clone();
        if !self.may_identify(conn) {
            return Caller {
                identity,
                assignment: None,
                assigned_by: AssignedBy::Workload,
                workload: None,
            };
        }
        for source in &self.sources {
            if let Some(Found {
                answer,
                source: by,
                workload,
            }) = source.identify(conn).get().await
            {
                let (assignment, assigned_by) = match answer {
                    Answer::Role(role) => (Some((role, by)), assigned_by(by)),
                    Answer::DefaultRole(session) => (
                        self.default_role(&session).map(|r| (r, by)),
                        AssignedBy::DefaultRole,
                    ),
                    Answer::Refused => (None, assigned_by(by)),
                };
                return Caller {
                    identity,
                    assignment,
                    assigned_by,
                    workload,
                };
            }
        }
        let assignment = self
            .default_role(&Session::default())
            .map(|r| (r, Source::DefaultRole));
        Caller {
            identity,
            assignment,
            assigned_by: AssignedBy::DefaultRole,
            workload: None,
        }
    }

    /// `DEFAULT_ROLE`, with the caller's session name, tags and source identity.
    pub fn default_role(&self, session: &Session) -> Option<Arc<RoleAssignment>> {
        let role = self.default_role.as_ref()?;
        Some(RoleAssignment::with_session(role, session))
    }
}

/// Who chose a role a source gave as the caller's own.
fn assigned_by(source: Source) -> AssignedBy {
    match source {
        Source::MappingFile | Source::CgroupPath => AssignedBy::MappingFile,
        Source::DefaultRole => AssignedBy::DefaultRole,
        Source::DockerCgroup | Source::DockerIp | Source::ContainerdCgroup | Source::ReverseDns => {
            AssignedBy::Workload
        }
    }
}

/// A shared source is a source (the same one may also be held by its reloader).
impl<T: Identify + ?Sized> Identify for Arc<T> {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        (**self).identify(conn)
    }
}

#[cfg(test)]
mod tests;
