//! A loopback TCP front for a unix socket (dockerd's) that can stop forwarding without closing
//! anything: to its clients every connection, old and new, goes silent but stays open — what a
//! half-open `tcp://` connection or a hung daemon looks like.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use crate::accept::AcceptLoop;

/// The relay; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct FreezableRelay {
    server: AcceptLoop,
    frozen: watch::Sender<Frozen>,
    accepted: Arc<AtomicU64>,
}

impl FreezableRelay {
    /// Relays 127.0.0.1:<new port> to the unix socket at `target`.
    pub fn start(target: PathBuf) -> Self {
        let (frozen, watching) = watch::channel(Frozen::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let server = AcceptLoop::start("freezable relay", move |inbound| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            relay(inbound, target.clone(), watching.clone(), n)
        });
        Self {
            server,
            frozen,
            accepted,
        }
    }

    /// `tcp://127.0.0.1:<port>`, for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.server.addr())
    }

    /// Stops (`true`) or resumes (`false`) forwarding, in both directions, on every connection.
    pub fn freeze(&self, all: bool) {
        self.frozen.send_replace(Frozen { all, before: 0 });
    }

    /// Stops forwarding on the connections open now only; later ones are relayed.
    pub fn freeze_open(&self) {
        let before = self.accepted.load(Ordering::SeqCst);
        self.frozen.send_replace(Frozen { all: false, before });
    }
}

/// Which connections are held: all, or those accepted before number `before`.
#[derive(Debug, Clone, Copy, Default)]
struct Frozen {
    all: bool,
    before: u64,
}

impl Frozen {
    fn holds(self, n: u64) -> bool {
        self.all || n < self.before
    }
}

async fn relay(inbound: TcpStream, target: PathBuf, mut frozen: watch::Receiver<Frozen>, n: u64) {
    if frozen.wait_for(|f| !f.holds(n)).await.is_err() {
        return;
    }
    let Ok(outbound) = UnixStream::connect(&target).await else {
        return;
    };
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        () = pipe(in_read, out_write, frozen.clone(), n) => {}
        () = pipe(out_read, in_write, frozen, n) => {}
    }
}

/// Copies `from` to `to`, holding every chunk back while frozen.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<Frozen>,
    conn: u64,
) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let len = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        if frozen.wait_for(|f| !f.holds(conn)).await.is_err()
            || to.write_all(&buf[..len]).await.is_err()
        {
            return;
        }
    }
}
