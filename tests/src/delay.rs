//! A loopback TCP relay that holds each connection for a while before relaying it: a slow STS, so
//! concurrent requests really overlap with one in-flight AssumeRole.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::accept::AcceptLoop;

/// The relay; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct SlowRelay {
    server: AcceptLoop,
}

impl SlowRelay {
    /// Relays 127.0.0.1:<new port> to `target`, each connection after `delay`.
    pub fn start(target: SocketAddr, delay: Duration) -> Self {
        Self {
            server: AcceptLoop::start("slow relay", move |inbound| relay(inbound, target, delay)),
        }
    }

    /// `http://127.0.0.1:<port>`, to use as an endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, delay: Duration) {
    tokio::time::sleep(delay).await;
    if let Ok(mut outbound) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
