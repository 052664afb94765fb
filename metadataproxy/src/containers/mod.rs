//! Containers, whatever their runtime: every running container with its addresses, cgroup and
//! role settings, kept in an in-memory index fed by a runtime's event stream (never a runtime
//! query per request), and the prefetching of their credentials. Docker (`docker/`) and
//! containerd (`containerd/`) are sources of this layer ([`ContainerSource`]); each identifies
//! callers against its own index.
//!
//! Addresses come from every network of a container and from Lyft's `io.rancher.container.ip`
//! label. Host-network containers have no address of their own: only the cgroup identifies them
//! ([`ContainerIndex::by_id`]).

mod container;
mod index;
mod prefetch;
pub(crate) mod settings;
mod source;
mod sync;
mod unreadable;

pub use container::{Container, ContainerInfo, RANCHER_IP_LABEL, short};
pub use index::{Change, ContainerIndex, START_GRACE};
pub use prefetch::Prefetcher;
pub use settings::{
    AUTHORIZATION_TOKEN_ENV, AUTHORIZATION_TOKEN_FILE_ENV, Authorization, ContainerRole,
    EXTERNAL_ID_ENV, EXTERNAL_ID_LABEL, POD_EXTERNAL_ID_ANNOTATION, POD_ROLE_ANNOTATION, ROLE_ENV,
    ROLE_LABEL, SettingsError,
};
pub use source::{Connection, ContainerSource, Event, SourceError};
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
