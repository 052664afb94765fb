//! One server for every listener: the accept loop, HTTP/1.1 with a request-head deadline
//! (`deadline.rs`) and a head-size bound, graceful shutdown. What a listener serves is a [`Site`]: the IMDS API (`imds/site.rs`,
//! on `HOST:PORT` and every redirect target it does not cover) and the admin endpoints
//! (`admin/`, on `ADMIN_LISTEN`). A site admits or refuses each connection (its limits), and
//! answers each request.

mod deadline;
mod io;
mod listen;

pub use listen::{BindError, bind, dual_stack, targets_to_bind};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A response body (the whole of it, in memory).
type Body = http_body_util::Full<bytes::Bytes>;
use io::{Tracked, refuse_draining};

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept()` (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The HTTP bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpBounds {
    /// How long a request head may take to arrive (begun and unfinished: 408; an idle keep-alive
    /// connection is closed).
    pub header_timeout: Duration,
    /// Largest request head (431 beyond it).
    pub max_head_bytes: usize,
}

/// How a refused connection is answered.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Written, then the caller's request drained for a moment before closing, so the answer is
    /// not lost to a reset (a task per refused connection, for a short while).
    Drained(&'static [u8]),
    /// Written best effort and closed at once: the descriptor is not kept (the admin listener,
    /// which anyone on the host can flood).
    AtOnce(&'static [u8]),
}

/// What a listener serves.
pub trait Site: Send + Sync + 'static {
    /// What an admitted connection carries into each of its requests.
    type Conn: Send + Sync + 'static;
    /// What an admitted connection holds while it is open (its place in the site's limits).
    type Permit: Send + 'static;

    /// The listener's HTTP bounds.
    fn bounds(&self) -> HttpBounds;

    /// Lets the connection from `peer` to `local` in, or refuses it (the site logs why).
    fn admit(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<(Self::Conn, Self::Permit), Refusal>;

    /// Answers one request of an admitted connection.
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: &Self::Conn,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Accepts connections on `listener` for `site` until `shutdown`, then lets in-flight requests
/// finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve<S: Site>(
    listener: TcpListener,
    site: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    let bounds = site.bounds();
    let deadlines = deadline::Deadlines::new(bounds.header_timeout);
    let sweeper = tokio::spawn(Arc::clone(&deadlines).run());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (conn, permit) = match site.admit(peer, local) {
            Ok(admitted) => admitted,
            Err(Refusal::Drained(answer)) => {
                tokio::spawn(refuse_draining(stream, answer));
                continue;
            }
            Err(Refusal::AtOnce(answer)) => {
                let _ = stream.try_write(answer);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // One shared handle per connection: each request clones one `Arc`, not the site's and
        // the connection's each.
        let served = Arc::new((Arc::clone(&site), conn));
        let watch = deadlines.watch(stream);
        let io = Tracked(Arc::clone(&watch));
        let service = service_fn(move |req| {
            // The head is in: no deadline while it is answered (the response restarts it).
            watch.head_arrived();
            let served = Arc::clone(&served);
            async move { Ok::<_, Infallible>(served.0.handle(req, &served.1).await) }
        });
        let connection = http1::Builder::new()
            .max_buf_size(bounds.max_head_bytes)
            // While a request is answered, do not read the socket to see whether the caller hung
            // up: that read reserved a new read buffer for every request (the request still held
            // the old one), about 500 instructions and an 8 KiB allocation each. A caller that
            // hangs up still ends the connection, at the next write or read; its request, bounded
            // by the credential and upstream timeouts, finishes first.
            .half_close(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!(addr = ?listener.local_addr().ok(), "shutting down: no new connections; waiting for in-flight requests");
    // Idle keep-alive connections still end at their deadline while in-flight requests finish.
    let sweeping = sweeper;
    if tokio::time::timeout(SHUTDOWN_GRACE, deadlines.drain())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests did not finish in time");
    }
    sweeping.abort();
}

#[cfg(test)]
mod tests;
