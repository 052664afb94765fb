//! The IMDS API as a site of the server: each connection's kernel record taken at accept, its
//! caller counted against the connection limits, each request answered and measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::conn::{BUSY, ConnLimits, ConnPermit};
use super::memo::{Memo, Recall};
use super::response::Body;
use super::service::Imds;
use crate::config::HttpLimits;
use crate::ebpf::ConnTable;
use crate::identity::ConnInfo;
use crate::server::{HttpBounds, Refusal, Site};

/// What the IMDS listeners serve, and within which limits.
#[derive(Debug, Clone)]
pub struct ImdsSite {
    /// The IMDS API.
    pub imds: Arc<Imds>,
    /// With the eBPF redirect: each connection's kernel record, taken at accept.
    pub table: Option<Arc<ConnTable>>,
    /// `HTTP_*` timeouts and sizes.
    pub http: HttpLimits,
    /// Open connections, shared by every listener.
    pub limits: Arc<ConnLimits>,
}

/// An admitted connection: what the socket layer knows of it, and its last credentials.
#[derive(Debug)]
pub struct ImdsConn {
    /// The caller as the socket layer knows it.
    pub info: ConnInfo,
    /// What it was last given.
    pub memo: Memo,
}

impl Site for ImdsSite {
    type Conn = ImdsConn;
    type Permit = ConnPermit;

    fn bounds(&self) -> HttpBounds {
        HttpBounds {
            header_timeout: self.http.header_timeout,
            max_head_bytes: self.http.max_head_bytes,
        }
    }

    /// A connection beyond `HTTP_MAX_CONNECTIONS` or `HTTP_MAX_CONNECTIONS_PER_CALLER` gets 503.
    fn admit(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<(ImdsConn, ConnPermit), Refusal> {
        let kernel = self.table.as_ref().and_then(|t| t.take(peer, local));
        let conn = ConnInfo::new(peer, local, kernel);
        let caller = conn.identity().clone();
        match self.limits.try_acquire(caller.clone()) {
            Ok(permit) => Ok((
                ImdsConn {
                    info: conn,
                    memo: Memo::default(),
                },
                permit,
            )),
            Err(hit) => {
                crate::refused!(WARN, &caller, peer = %peer, limit = %hit, "connection refused with 503");
                Err(Refusal::Drained(BUSY))
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>, conn: &ImdsConn) -> Response<Body> {
        let started = Instant::now();
        let recall = Recall {
            memo: &conn.memo,
            began: started,
        };
        let (resp, route) = self
            .imds
            .handle_routed(&req, &conn.info, Some(recall))
            .await;
        crate::metrics::request(route, resp.status(), started.elapsed());
        resp
    }
}
