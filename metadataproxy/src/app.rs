//! Wiring: builds every component from the configuration, serves the IMDS API, shuts down cleanly.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::ready::{EbpfState, StsCheck};
use crate::admin::{Admin, Readiness};
use crate::cgroup::CgroupPaths;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ContainerdConfig, ContainerdMode, EbpfMode, Endpoint, ProxyPaths};
use crate::containerd::{ContainerdApi, ContainerdCgroup};
use crate::containers::{
    self, ContainerIndex, ContainerSource, IndexListener, NoListener, Prefetcher, SyncConfig,
};
use crate::creds::aws::AwsSts;
use crate::creds::{CredentialCache, CredentialCacheConfig, Sts};
use crate::creds::{MeteredSts, Resolver, StsHealth};
use crate::docker::{
    self, CallerContainer, DockerApi, DockerCgroup, DockerIp, ReverseDns, SystemResolver,
};
use crate::ebpf::ConnTable;
use crate::identity::mapping_file::CgroupSource;
use crate::identity::mapping_file::{Mapping, MappingError, MappingFile};
use crate::identity::{AddressIdentity, Chain, Identify, MappingPolicy};
use crate::imds::conn::ConnLimits;
use crate::imds::ecs::Ecs;
use crate::imds::iam::Iam;
use crate::imds::mock::MockTree;
use crate::imds::proxy::{AllowList, Upstream};
use crate::imds::service::{Imds, Passthrough};
use crate::imds::site::ImdsSite;
use crate::imds::token::Tokens;
use crate::policy::{AssignedBy, Gate, PolicyError, PolicyFile, Subject};
use crate::role::RoleAssignment;
use crate::server;

/// How often the background refresher looks for credentials due for renewal.
const REFRESH_TICK: Duration = Duration::from_secs(15);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `ROLE_MAPPING_FILE` cannot be loaded at start-up.
    #[error(transparent)]
    MappingFile(#[from] MappingError),
    /// `ROLE_POLICY_FILE` cannot be loaded at start-up.
    #[error(transparent)]
    PolicyFile(#[from] PolicyError),
    /// The eBPF redirect is required and cannot be set up.
    #[error("eBPF redirect (EBPF=required): {0}")]
    Ebpf(#[from] crate::ebpf::EbpfError),
    /// The listen address cannot be bound.
    #[error(transparent)]
    Bind(#[from] server::BindError),
    /// The key that seals `IMDSv2` tokens cannot be drawn.
    #[error(transparent)]
    TokenKey(#[from] crate::imds::token::KeyError),
}

/// What the IMDS API is built on besides the configuration: AWS, time, and where callers and
/// containers are found.
#[derive(Debug)]
pub struct Peers {
    /// STS (metered, in the daemon).
    pub sts: Arc<dyn Sts>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// cgroup id → path: set when the eBPF redirect is in force, so callers are identified by
    /// their kernel-attested cgroup.
    pub cgroups: Option<Arc<CgroupPaths>>,
    /// Docker, followed in the background (see [`docker_sources`]).
    pub docker: Option<Arc<dyn ContainerSource>>,
    /// containerd, followed in the background (its containers are identified by cgroup only).
    pub containerd: Option<Arc<dyn ContainerSource>>,
}

/// The IMDS API and the parts of it the admin endpoints look at.
#[derive(Debug)]
pub struct Parts {
    /// The API.
    pub imds: Arc<Imds>,
    /// Its credential cache.
    pub cache: Arc<CredentialCache>,
    /// The container index, when Docker is used.
    pub index: Option<Arc<ContainerIndex>>,
    /// containerd's container index, when containerd is followed.
    pub containerd: Option<Arc<ContainerIndex>>,
}

/// Builds the IMDS API from the configuration and its peers (no socket; used by `run` and by
/// tests): the credential cache and its refresher, the container indexes, the identification
/// chain, and the prefetch of every role the configuration names.
pub fn build(config: &Config, peers: Peers) -> Result<Parts, AppError> {
    let Peers {
        sts,
        clock,
        cgroups,
        docker,
        containerd,
    } = peers;
    let mapping_file = match &config.role_mapping_file {
        Some(path) => Some(Arc::new(MappingFile::load(path)?)),
        None => None,
    };
    let policy = role_policy(config)?;
    let (resolver, cache) = credentials(config, sts, &clock);
    let fetch = Prefetch {
        resolver: Arc::clone(&resolver),
        cache: Arc::clone(&cache),
        policy: policy.clone(),
    };
    // Credentials ready before the first request: every role the configuration names (and the
    // role policy allows) is fetched now, and again for the roles of each reloaded mapping.
    let default_role = config.default_role.clone().map(RoleAssignment::from_role);
    let mut known: Vec<Wanted> = default_role.iter().map(Wanted::default_role).collect();
    // With the redirect attached, a connection without a kernel record chose to skip it.
    let by_address = match &cgroups {
        Some(_) => AddressIdentity::Only(config.ebpf.direct_callers.clone().into()),
        None => AddressIdentity::Everyone,
    };
    let held = ContainerUse {
        resolver: &resolver,
        cache: &cache,
        default_role: default_role.clone().map(Arc::new),
        policy: &policy,
    };
    let containerd = match (containerd, &cgroups) {
        (Some(source), Some(paths)) => {
            Some(containerd_sources(config, source, Arc::clone(paths), &held))
        }
        _ => None,
    };
    let docker = docker.map(|source| {
        let by = DockerBy {
            cgroup: cgroups.clone(),
            address: mapping_file.is_none(),
        };
        docker_sources(config, source, by, &held)
    });
    // The caller's container as the chain finds it, for `ECS_ENDPOINT`'s token check.
    let caller_container = docker
        .as_ref()
        .map_or_else(CallerContainer::default, |d| d.caller_container.clone());
    let mapping_by_cgroup = match (&mapping_file, &cgroups) {
        (Some(file), Some(paths)) => Some(Box::new(CgroupSource {
            paths: Arc::clone(paths),
            mapping: Arc::clone(file),
        }) as Box<dyn Identify>),
        _ => None,
    };
    let mapping_by_ip = mapping_file.map(|file| {
        known.extend(Wanted::mapped(&file.current()));
        let fetch = fetch.clone();
        Arc::clone(&file).spawn_reloader(config.mapping_reload_interval, move |mapping| {
            fetch.start(Wanted::mapped(&mapping));
        });
        Box::new(file) as Box<dyn Identify>
    });
    let (containerd_index, by_containerd_cgroup) = containerd.unzip();
    let (docker_index, docker_by_cgroup, docker_by_ip, docker_by_reverse_dns) = match docker {
        Some(d) => (Some(d.index), d.by_cgroup, d.by_ip, d.by_reverse_dns),
        None => (None, None, None, None),
    };
    // The identification chain, in the order its sources are asked: the first that knows the
    // caller wins (a security decision: what the kernel attests comes before what an address
    // says), then `DEFAULT_ROLE`.
    let sources: Vec<Box<dyn Identify>> = [
        // `cgroup:` keys of ROLE_MAPPING_FILE, by the kernel-attested cgroup.
        mapping_by_cgroup,
        // The containerd container, then the Docker container, of the kernel-attested cgroup.
        by_containerd_cgroup,
        docker_by_cgroup,
        // Without ROLE_MAPPING_FILE (as in Lyft): the Docker container with the caller's
        // address, then the one its reverse DNS names (ROLE_REVERSE_LOOKUP).
        docker_by_ip,
        docker_by_reverse_dns,
        // The address keys of ROLE_MAPPING_FILE.
        mapping_by_ip,
    ]
    .into_iter()
    .flatten()
    .collect();
    fetch.start(known);
    let chain = Arc::new(Chain::new(sources, default_role).with_address_identity(by_address));
    let iam = Iam {
        chain,
        resolver,
        cache: Arc::clone(&cache),
        clock: Arc::clone(&clock),
        policy,
        cgroups,
    };
    let imds = imds(config, iam, clock, caller_container)?;
    Ok(Parts {
        imds,
        cache,
        index: docker_index,
        containerd: containerd_index,
    })
}

/// `ROLE_POLICY_FILE`, loaded and followed (a broken version keeps the last good one).
fn role_policy(config: &Config) -> Result<Gate, PolicyError> {
    let Some(path) = &config.role_policy_file else {
        return Ok(Gate::default());
    };
    let file = Arc::new(PolicyFile::load(path)?);
    Arc::clone(&file).spawn_reloader(config.mapping_reload_interval, |_| {});
    Ok(Gate::new(Some(file)))
}

/// The role resolver and the credential cache (its refresher started).
fn credentials(
    config: &Config,
    sts: Arc<dyn Sts>,
    clock: &Arc<dyn Clock>,
) -> (Arc<Resolver>, Arc<CredentialCache>) {
    let resolver = Arc::new(Resolver::new(
        config.account_map.clone(),
        config.default_account_id.clone(),
        config.aws_region.as_deref(),
        Arc::clone(&sts),
        Arc::clone(clock),
    ));
    let cache = CredentialCache::new(
        sts,
        Arc::clone(clock),
        CredentialCacheConfig {
            capacity: NonZeroUsize::new(config.credential_cache_size).unwrap_or(NonZeroUsize::MIN),
            threshold: config.expiration_threshold,
            session_duration: config.role_session_duration,
            idle_after: config.role_session_duration * 2,
            max_calls_per_second: config.sts_max_calls_per_second,
        },
    );
    cache.spawn_refresher(REFRESH_TICK);
    (resolver, cache)
}

/// The IMDS API over its IAM routes.
fn imds(
    config: &Config,
    iam: Iam,
    clock: Arc<dyn Clock>,
    caller_container: CallerContainer,
) -> Result<Arc<Imds>, AppError> {
    let passthrough = if config.mock_api {
        Passthrough::Mock(MockTree::new(&config.mocked_instance_id))
    } else {
        Passthrough::Proxy(Box::new(Upstream::new(
            config.metadata_url.clone(),
            config.upstream_timeout,
            allow_list(&config.proxy_allowed_paths),
        )))
    };
    Ok(Arc::new(Imds {
        iam,
        tokens: Tokens::new(Arc::clone(&clock))?,
        passthrough,
        imdsv2_required: config.imdsv2_required,
        ecs: config
            .ecs_endpoint
            .then(|| Ecs::new(Arc::new(caller_container))),
        clock,
    }))
}

/// What proxy mode forwards, from `PROXY_ALLOWED_PATHS`.
fn allow_list(paths: &ProxyPaths) -> AllowList {
    match paths {
        ProxyPaths::Everything => AllowList::everything(),
        ProxyPaths::List {
            builtin: true,
            prefixes,
        } => AllowList::builtin_and(prefixes),
        ProxyPaths::List {
            builtin: false,
            prefixes,
        } => AllowList::only(prefixes),
    }
}

/// What every container source's index is given: containers' roles are prefetched and held
/// while they run.
struct ContainerUse<'a> {
    resolver: &'a Arc<Resolver>,
    cache: &'a Arc<CredentialCache>,
    default_role: Option<Arc<RoleAssignment>>,
    policy: &'a Gate,
}

impl ContainerUse<'_> {
    fn prefetcher(&self) -> Arc<Prefetcher> {
        Arc::new(
            Prefetcher::new(
                Arc::clone(self.resolver),
                Arc::clone(self.cache),
                self.default_role.clone(),
            )
            .with_policy(self.policy.clone()),
        )
    }
}

/// How Docker containers are identified.
#[derive(Debug)]
struct DockerBy {
    /// Through the kernel-attested cgroup (eBPF redirect in force).
    cgroup: Option<Arc<CgroupPaths>>,
    /// Through the caller's address (and reverse DNS): only without `ROLE_MAPPING_FILE`, which,
    /// as in Lyft, is then the only address-based source.
    address: bool,
}

/// Docker's index and the identification sources built on it.
struct Docker {
    index: Arc<ContainerIndex>,
    /// The container of the caller's cgroup.
    by_cgroup: Option<Box<dyn Identify>>,
    /// The container with the caller's address.
    by_ip: Option<Box<dyn Identify>>,
    /// The container the caller's reverse DNS names (`ROLE_REVERSE_LOOKUP`).
    by_reverse_dns: Option<Box<dyn Identify>>,
    /// The caller's container as those find it (for `ECS_ENDPOINT`).
    caller_container: CallerContainer,
}

/// Starts Docker's container index and builds the sources `by` asks for. Containers' roles are
/// prefetched and held while they run whenever containers are identified at all.
fn docker_sources(
    config: &Config,
    source: Arc<dyn ContainerSource>,
    by: DockerBy,
    containers: &ContainerUse<'_>,
) -> Docker {
    let used = by.address || by.cgroup.is_some();
    let listener: Arc<dyn IndexListener> = if used {
        containers.prefetcher()
    } else {
        Arc::new(NoListener)
    };
    let sync = SyncConfig {
        session_key: config.role_session_key.clone(),
        tags: config.session_tags.clone(),
        ping_interval: config.docker_ping_interval,
        ..SyncConfig::default()
    };
    let (index, _task) = containers::spawn(source, listener, sync);
    let by_cgroup = by
        .cgroup
        .map(|paths| DockerCgroup::new(Arc::clone(&index), paths));
    let by_ip = by.address.then(|| DockerIp::new(Arc::clone(&index)));
    let by_reverse_dns = (by.address && config.role_reverse_lookup).then(|| {
        let resolver = SystemResolver {
            timeout: docker::REVERSE_LOOKUP_TIMEOUT,
        };
        Box::new(ReverseDns::new(
            Arc::clone(&index),
            Box::new(resolver),
            config.hostname_match_regex.clone(),
        )) as Box<dyn Identify>
    });
    Docker {
        caller_container: CallerContainer {
            by_cgroup: by_cgroup.clone(),
            by_ip: by_ip.clone(),
        },
        index,
        by_cgroup: by_cgroup.map(|s| Box::new(s) as Box<dyn Identify>),
        by_ip: by_ip.map(|s| Box::new(s) as Box<dyn Identify>),
        by_reverse_dns,
    }
}

/// Starts the containerd index; returns it and the identification source built on it: the
/// containerd container of the caller's cgroup.
fn containerd_sources(
    config: &Config,
    source: Arc<dyn ContainerSource>,
    paths: Arc<CgroupPaths>,
    containers: &ContainerUse<'_>,
) -> (Arc<ContainerIndex>, Box<dyn Identify>) {
    let sync = SyncConfig {
        session_key: config.role_session_key.clone(),
        tags: config.session_tags.clone(),
        ..SyncConfig::default()
    };
    let (index, _task) = containers::spawn(source, containers.prefetcher(), sync);
    let found = Box::new(ContainerdCgroup::new(
        Arc::clone(&index),
        paths,
        &config.containerd.namespaces,
    ));
    (index, found)
}

/// Docker as a container source.
fn docker_source(endpoint: Option<&Endpoint>) -> Option<Arc<dyn ContainerSource>> {
    let Some(endpoint) = endpoint else {
        tracing::info!("DOCKER_URL=off: Docker containers are not identified");
        return None;
    };
    Some(Arc::new(DockerApi::new(endpoint.clone())))
}

/// containerd as a container source, if `CONTAINERD` and the redirect allow it.
fn containerd_source(
    config: &ContainerdConfig,
    by_cgroup: bool,
) -> Option<Arc<dyn ContainerSource>> {
    let address = config.address.display();
    match config.mode {
        ContainerdMode::Off => None,
        _ if !by_cgroup => {
            tracing::info!(
                "containerd containers are identified by their cgroup only: without the eBPF redirect they are not identified"
            );
            None
        }
        ContainerdMode::Auto if !config.address.exists() => {
            tracing::info!(containerd = %address, "no containerd socket: containerd containers are not identified (CONTAINERD=on follows it even when it appears later)");
            None
        }
        ContainerdMode::Auto | ContainerdMode::On => {
            tracing::info!(containerd = %address, namespaces = %config.namespaces.join(","), "identifying containerd containers");
            Some(Arc::new(ContainerdApi::new(
                config.address.clone(),
                &config.namespaces,
            )))
        }
    }
}

/// A role the configuration names, to fetch before anyone asks.
struct Wanted {
    assignment: Arc<RoleAssignment>,
    assigned_by: AssignedBy,
    /// The cgroup of a `cgroup:` mapping entry.
    cgroup: Option<String>,
}

impl Wanted {
    /// `DEFAULT_ROLE`.
    fn default_role(a: &RoleAssignment) -> Wanted {
        Wanted {
            assignment: Arc::new(a.clone()),
            assigned_by: AssignedBy::DefaultRole,
            cgroup: None,
        }
    }

    /// Every entry of a mapping.
    fn mapped(mapping: &Mapping) -> Vec<Wanted> {
        mapping
            .entries()
            .map(|(cgroup, a)| Wanted {
                assignment: Arc::clone(a),
                assigned_by: AssignedBy::MappingFile,
                cgroup: cgroup.map(str::to_owned),
            })
            .collect()
    }
}

/// Fetches the roles the configuration names, in the background.
#[derive(Clone)]
struct Prefetch {
    resolver: Arc<Resolver>,
    cache: Arc<CredentialCache>,
    policy: Gate,
}

impl Prefetch {
    /// Starts fetching credentials for each wanted role the role policy allows.
    fn start(&self, wanted: Vec<Wanted>) {
        if wanted.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for w in wanted {
                match this.resolver.cache_key(&w.assignment).await {
                    Ok((key, arn)) => {
                        let subject = Subject {
                            assigned_by: w.assigned_by,
                            workload: None,
                            cgroup: w.cgroup.as_deref(),
                        };
                        match this.policy.check(&subject, &arn, &key.role_arn) {
                            Ok(()) => this.cache.prefetch(&key),
                            Err(refused) => {
                                tracing::info!(role_arn = %key.role_arn, assigned_by = w.assigned_by.as_str(), cgroup = w.cgroup.as_deref(), rule = %refused.rule, reason = %refused.why, "not prefetched: the role policy refuses it");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(role = %w.assignment.role, error = %e, "cannot prefetch credentials");
                    }
                }
            }
        });
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    for name in &config.retired {
        tracing::warn!(
            setting = name,
            "retired setting ignored: IMDSv2 tokens are sealed (they carry their expiry and a tag binding them to their caller) and the daemon stores none, so there is nothing for it to bound"
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sts = AwsSts::load(
        config.aws_region.clone(),
        config.patch_ecs_allowed_hosts.as_deref(),
        Arc::clone(&clock),
    )
    .await;
    tracing::info!(region = ?sts.region(), "AWS clients ready");
    let sts = Arc::new(sts);
    let sts_health = Arc::new(StsHealth::default());
    let metered: Arc<dyn Sts> = Arc::new(MeteredSts::new(
        Arc::clone(&sts) as Arc<dyn Sts>,
        Arc::clone(&sts_health),
    ));
    // Listen before the redirect points at us, so a restart has no window without a listener.
    // Connection records from before this moment are stale; later ones are in our backlog.
    let listening_since = crate::ebpf::monotonic_now().unwrap_or(std::time::Duration::MAX);
    let listener = server::bind(config.listen).await?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    // containerd puts containers at /<namespace>/<id> whatever their names.
    let container_roots = if config.containerd.mode == ContainerdMode::Off {
        Vec::new()
    } else {
        config.containerd.namespaces.clone()
    };
    let policy = MappingPolicy::new(config.role_mapping_file.clone(), container_roots);
    let target = crate::ebpf::Target::new(&config.ebpf, config.listen, config.ecs_endpoint);
    let kernel =
        crate::ebpf::start(&config.ebpf, target, Box::new(policy), listening_since).await?;
    let mut extra = Vec::new();
    if kernel.is_some() {
        for target in server::targets_to_bind(config.listen, &config.ebpf, server::dual_stack()) {
            extra.push(server::bind(target).await?);
        }
    }
    let table = kernel.as_ref().map(|k| Arc::clone(&k.table));
    let docker = docker_source(config.docker.as_ref());
    let containerd = containerd_source(&config.containerd, kernel.is_some());
    let parts = build(
        &config,
        Peers {
            sts: metered,
            clock,
            cgroups: kernel.as_ref().map(|k| Arc::clone(&k.paths)),
            docker,
            containerd,
        },
    )?;
    let imds = Arc::clone(&parts.imds);
    let admin = admin_listener.map(|listener| {
        let admin = admin(
            &config,
            kernel.is_some(),
            &parts,
            table.clone(),
            sts_health,
            sts,
        );
        crate::admin::spawn(listener, admin)
    });
    tracing::info!(addr = %config.listen, mock_api = config.mock_api, imdsv2_required = config.imdsv2_required, "listening");
    let site = Arc::new(ImdsSite {
        imds,
        table,
        http: config.http,
        // One set of connection limits for every listener.
        limits: ConnLimits::new(
            config.http.max_connections,
            config.http.max_connections_per_caller,
        ),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let others: Vec<_> = extra
        .into_iter()
        .map(|listener| {
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(server::serve(listener, Arc::clone(&site), async move {
                let _ = stop_rx.changed().await;
            }))
        })
        .collect();
    server::serve(listener, site, shutdown).await;
    let _ = stop_tx.send(true);
    for other in others {
        let _ = other.await;
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    if let Some(kernel) = kernel {
        kernel.shutdown().await;
    }
    Ok(())
}

/// What the admin endpoints look at.
fn admin(
    config: &Config,
    attached: bool,
    parts: &Parts,
    table: Option<Arc<ConnTable>>,
    sts_health: Arc<StsHealth>,
    probe: Arc<AwsSts>,
) -> Admin {
    let ebpf = match (attached, config.ebpf.mode) {
        (true, _) => EbpfState::Attached,
        (false, EbpfMode::Off) => EbpfState::Off,
        (false, _) => EbpfState::FellBack,
    };
    let map_size = usize::try_from(config.ebpf.map_size).unwrap_or(usize::MAX);
    Admin {
        readiness: Readiness {
            ebpf,
            docker: parts.index.clone(),
            docker_url: config.docker.clone(),
            containerd: parts
                .containerd
                .clone()
                .map(|index| (index, config.containerd.address.display().to_string())),
            sts: StsCheck::new(sts_health, probe),
        },
        cache: Arc::clone(&parts.cache),
        occupancy: table.map(|t| crate::admin::Occupancy::new(t, map_size)),
    }
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
