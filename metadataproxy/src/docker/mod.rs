//! Docker: every running container, its addresses and its role settings, kept in an in-memory
//! index fed by Docker's event stream (never a Docker query per request), and the identification
//! sources and prefetching built on it.
//!
//! Addresses come from every network of a container (`NetworkSettings.Networks[*]`, which holds
//! the default bridge's `NetworkSettings.IPAddress` too) and from Lyft's `io.rancher.container.ip`
//! label. Host-network containers have no address of their own: only the cgroup identifies them
//! ([`ContainerIndex::by_id`]).

mod api;
pub mod cgroup;
mod container;
mod identify;
mod index;
mod prefetch;
pub(crate) mod settings;
mod source;
mod sync;

pub use api::DockerApi;

pub use container::{Container, ContainerInfo, RANCHER_IP_LABEL, short};
pub use identify::{
    CallerContainer, DockerCgroup, DockerIp, REVERSE_LOOKUP_TIMEOUT, ReverseDns, ReverseLookup,
    START_GRACE, SystemResolver, match_key,
};
pub use index::{Change, ContainerIndex};
pub use prefetch::Prefetcher;
pub use settings::{
    AUTHORIZATION_TOKEN_ENV, AUTHORIZATION_TOKEN_FILE_ENV, Authorization, ContainerRole,
    EXTERNAL_ID_ENV, EXTERNAL_ID_LABEL, POD_EXTERNAL_ID_ANNOTATION, POD_ROLE_ANNOTATION, ROLE_ENV,
    ROLE_LABEL, SettingsError,
};
pub use source::{Connection, ContainerSource, DockerError, Event};
pub use sync::{IndexListener, NoListener, SyncConfig, Syncer};

use std::sync::Arc;

/// Starts keeping a new index in step with `source` in the background; returns the index.
pub fn spawn(
    source: Arc<dyn ContainerSource>,
    listener: Arc<dyn IndexListener>,
    config: SyncConfig,
) -> (Arc<ContainerIndex>, tokio::task::JoinHandle<()>) {
    let index = ContainerIndex::new();
    let syncer = Syncer::new(source, Arc::clone(&index), listener, config);
    let task = tokio::spawn(syncer.run());
    (index, task)
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod wiring_tests;
