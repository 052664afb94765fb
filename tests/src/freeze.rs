//! A loopback TCP front for a unix socket (dockerd's) that can stop forwarding without closing
//! anything: to its clients every connection, old and new, goes silent but stays open — what a
//! half-open `tcp://` connection or a hung daemon looks like.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{oneshot, watch};

/// The relay; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct FreezableRelay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FreezableRelay {
    /// Relays 127.0.0.1:<new port> to the unix socket at `target`.
    pub fn start(target: PathBuf) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("non-blocking relay");
        let addr = listener.local_addr().expect("relay address");
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let (frozen, watching) = watch::channel(false);
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
                                tokio::spawn(relay(inbound, target.clone(), watching.clone()));
                            }
                        }
                    }
                }
            });
        });
        Self {
            addr,
            frozen,
            shutdown: Some(shutdown),
        }
    }

    /// `tcp://127.0.0.1:<port>`, for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Stops (`true`) or resumes (`false`) forwarding, in both directions, on every connection.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn relay(inbound: TcpStream, target: PathBuf, mut frozen: watch::Receiver<bool>) {
    if frozen.wait_for(|f| !*f).await.is_err() {
        return;
    }
    let Ok(outbound) = UnixStream::connect(&target).await else {
        return;
    };
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        () = pipe(in_read, out_write, frozen.clone()) => {}
        () = pipe(out_read, in_write, frozen) => {}
    }
}

/// Copies `from` to `to`, holding every chunk back while frozen.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
