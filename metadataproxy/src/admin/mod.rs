//! The admin listener (`ADMIN_LISTEN`): `/healthz` (the process serves), `/readyz` (see
//! [`ready`]) and `/metrics` (Prometheus). Every other path is 404: it never serves credentials
//! nor anything of the IMDS API. At most [`MAX_CONNECTIONS`] connections are open at once.

mod occupancy;
pub mod ready;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::caller::Identity;
use crate::containers::ContainerIndex;
use crate::creds::CredentialCache;
use crate::imds::response::{self, Body};
use crate::metrics::{self, State};
use crate::server::{self, HttpBounds, Refusal, Site};
pub use occupancy::Occupancy;
pub use ready::Readiness;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head: the admin paths and a scraper's headers are small.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most admin connections open at once. Its clients are a Prometheus scraper, a health probe or
/// two and an operator's `curl`, a handful at a time; anyone on the host can connect to it, and
/// each connection is a file descriptor and a task of the process that serves IMDS. So a flood
/// costs at most this many descriptors: beyond it a connection gets 503 at once and is closed.
pub const MAX_CONNECTIONS: usize = 32;

/// Sent to a connection beyond [`MAX_CONNECTIONS`] (best effort, never waited for).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 47\r\n\r\n\
Service Unavailable: too many admin connections";

/// What the admin endpoints read.
#[derive(Debug)]
pub struct Admin {
    /// The readiness checks.
    pub readiness: Readiness,
    /// The credential cache (its size is a metric).
    pub cache: Arc<CredentialCache>,
    /// Counts the eBPF connection maps, in eBPF mode.
    pub occupancy: Option<Occupancy>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return response::text(StatusCode::NOT_FOUND, "Not Found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = response::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match path {
            "/healthz" => response::text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let (ready, body) = ready::report(&self.readiness.checks());
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                response::text(status, body)
            }
            _ => {
                let state = self.state().await;
                metrics::global().set_state(&state);
                response::with_type(
                    StatusCode::OK,
                    metrics::global().encode().into(),
                    metrics::CONTENT_TYPE,
                )
            }
        }
    }

    /// The scrape-time gauges (the eBPF maps counted as [`Occupancy`] says).
    async fn state(&self) -> State {
        let ebpf = match &self.occupancy {
            Some(occupancy) => occupancy.get().await,
            None => None,
        };
        let docker =
            self.readiness
                .docker
                .as_deref()
                .map(|i: &ContainerIndex| metrics::IndexState {
                    containers: i.len(),
                    synchronised: i.is_live(),
                    unreadable: i.unreadable(),
                });
        State {
            cache_entries: self.cache.len(),
            docker,
            ebpf,
        }
    }
}

/// The admin listener running in the background.
#[derive(Debug)]
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting admin connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves `admin` on `listener` in the background, and starts a first STS probe so readiness
/// knows the state of STS from the start.
pub fn spawn(listener: TcpListener, admin: Admin) -> Running {
    admin.readiness.sts.spawn_probe();
    tracing::info!(addr = ?listener.local_addr().ok(), "admin listener: /healthz, /readyz, /metrics");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(listener, Arc::new(admin), async move {
        let _ = stopped.changed().await;
    }));
    Running { stop, task }
}

/// Serves the admin endpoints on `listener` until `shutdown`, [`MAX_CONNECTIONS`] at a time.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    let site = AdminSite {
        admin,
        open: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    server::serve(listener, Arc::new(site), shutdown).await;
}

/// The admin endpoints as a site of the server.
#[derive(Debug)]
struct AdminSite {
    admin: Arc<Admin>,
    open: Arc<Semaphore>,
}

impl Site for AdminSite {
    type Conn = ();
    type Permit = OwnedSemaphorePermit;

    fn bounds(&self) -> HttpBounds {
        HttpBounds {
            header_timeout: HEADER_READ_TIMEOUT,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }

    fn admit(&self, peer: SocketAddr, _local: SocketAddr) -> Result<((), Self::Permit), Refusal> {
        let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() else {
            crate::refused!(WARN, &Identity::from_peer(peer), peer = %peer, limit = MAX_CONNECTIONS, "admin connection refused with 503");
            // Answered and closed at once: the descriptor is not kept.
            return Err(Refusal::AtOnce(BUSY));
        };
        Ok(((), permit))
    }

    async fn handle(&self, req: Request<Incoming>, (): &()) -> Response<Body> {
        self.admin.handle(&req).await
    }
}

#[cfg(test)]
mod tests;
