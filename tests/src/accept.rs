//! A loopback TCP listener on its own thread and runtime that hands every accepted connection to
//! a handler task; the scaffold of the harness's relays and proxies. Stops accepting when dropped.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The listener; `what` names it in panics.
#[derive(Debug)]
pub struct AcceptLoop {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl AcceptLoop {
    /// Listens on 127.0.0.1:<new port>; each connection runs `handle(stream)` as its own task.
    pub fn start<F, Fut>(what: &str, mut handle: F) -> Self
    where
        F: FnMut(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind the {what}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("non-blocking {what}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let what = what.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)
                    .unwrap_or_else(|e| panic!("tokio {what} listener: {e}"));
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        accepted = listener.accept() => {
                            if let Ok((inbound, _)) = accepted {
                                tokio::spawn(handle(inbound));
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

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
