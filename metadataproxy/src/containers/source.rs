//! Where container facts come from: a runtime's API behind a trait (Docker's and containerd's
//! implement it), so the index and its synchroniser are tested with a fake.

use std::fmt;
use std::time::SystemTime;

use futures_util::stream::BoxStream;
use thiserror::Error;

use super::container::ContainerInfo;
use futures_util::future::BoxFuture;

/// A container event the index acts on (already filtered to these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The container started: inspect it and index it.
    Start(String),
    /// The container's process exited: forget it now, before its address can be reused.
    Die(String),
    /// The container was removed.
    Destroy(String),
    /// Renamed, or connected to / disconnected from a network: inspect it again.
    Changed(String),
}

impl Event {
    /// The container's id.
    pub fn id(&self) -> &str {
        match self {
            Self::Start(id) | Self::Die(id) | Self::Destroy(id) | Self::Changed(id) => id,
        }
    }
}

/// A runtime's own error, kept whole (its chain of causes is logged).
pub type RuntimeError = Box<dyn std::error::Error + Send + Sync>;

/// Why following a container runtime failed.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The runtime cannot be reached at its address, or refused the connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] RuntimeError),
    /// An API call failed.
    #[error("{call} failed: {source}")]
    Api {
        /// Which call.
        call: &'static str,
        /// What the runtime or the connection said.
        source: RuntimeError,
    },
    /// No answer to a liveness ping in time: the connection (and so the event stream) may be
    /// dead without having been closed, or the daemon hangs.
    #[error("no answer to a liveness ping within {0:?} (a dead connection or a hung daemon)")]
    Unresponsive(std::time::Duration),
    /// The index kept differing from the daemon's listing: the event stream missed events.
    #[error(
        "{0} container(s) differ between the index and the daemon's listing at two checks in a row (the event stream missed events)"
    )]
    Drifted(usize),
    /// The event stream ended: the runtime stopped or the connection dropped.
    #[error("the event stream ended (the runtime stopped or the connection dropped)")]
    StreamEnded,
    /// The runtime failed in a way of its own (containerd's gRPC status, …).
    #[error(transparent)]
    Runtime(RuntimeError),
    /// The runtime answered about one container, but not with something usable: an error status
    /// other than "no such container", or a description that does not decode. The connection is
    /// fine; only that container cannot be identified (and so gets nothing) until it can.
    #[error("{call} for container {} failed: {source}", super::short(.id))]
    Unreadable {
        /// Which call.
        call: &'static str,
        /// The container's id.
        id: String,
        /// What the runtime said, or why its answer could not be read.
        source: RuntimeError,
    },
}

impl SourceError {
    /// Whether it concerns one container only (the connection and the other containers are fine).
    pub fn is_about_one_container(&self) -> bool {
        matches!(self, Self::Unreadable { .. })
    }
}

/// One connection to a container runtime.
pub trait Connection: Send + Sync + fmt::Debug {
    /// Container events from `since` on (events between `since` and now are replayed, so nothing
    /// is missed between subscribing and listing).
    fn events(&self, since: SystemTime) -> BoxStream<'static, Result<Event, SourceError>>;

    /// The ids of the running containers.
    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>>;

    /// What Docker says about one container; `None` if it no longer exists.
    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>>;

    /// A call proving the daemon still answers, asked periodically while the event stream is open,
    /// since an idle stream cannot tell "no events" from "dead". Docker answers with the ids of the
    /// running containers, so the index can be checked against them: a difference that persists
    /// means events were missed (the stream's own connection died alone). `None`: no such check.
    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>>;
}

/// A way to (re)connect to a container runtime: Docker, containerd.
pub trait ContainerSource: Send + Sync + fmt::Debug {
    /// Where it connects to, for logs.
    fn describe(&self) -> String;

    /// The runtime's name, for logs.
    fn runtime(&self) -> &'static str {
        "Docker"
    }

    /// A new connection, ready to use.
    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, SourceError>>;
}
