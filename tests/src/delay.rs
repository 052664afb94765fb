//! A loopback TCP relay that holds each connection for a while before relaying it: a slow STS, so
//! concurrent requests really overlap with one in-flight AssumeRole.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The relay; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct SlowRelay {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl SlowRelay {
    /// Relays 127.0.0.1:<new port> to `target`, each connection after `delay`.
    pub fn start(target: SocketAddr, delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("non-blocking relay");
        let addr = listener.local_addr().expect("relay address");
        let (shutdown, mut stop) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("tokio relay listener");
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        accepted = listener.accept() => {
                            if let Ok((inbound, _)) = accepted {
                                tokio::spawn(relay(inbound, target, delay));
                            }
                        }
                    }
                }
            });
        });
        Self {
            addr,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:<port>`, to use as an endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, delay: Duration) {
    tokio::time::sleep(delay).await;
    if let Ok(mut outbound) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
