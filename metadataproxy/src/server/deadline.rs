//! Request-head deadlines without a timer per request: each connection notes, on a coarse
//! clock, since when it has been waiting for a request head (from accept, and after each
//! response; not while a request is being answered), and one sweeper per listener, ticking at
//! an eighth of the timeout, ends every connection that has waited longer — with `408` when a
//! head was begun (slowloris), silently when it was an idle keep-alive. A per-request timer
//! (hyper's `header_read_timeout`) cost an allocation and two timer-wheel updates per request.
//!
//! The same list drains the listener at shutdown ([`Deadlines::drain`]): idle connections are
//! closed, and a connection being answered has its read side shut, so it ends after its response.
//! A per-connection shutdown watch (hyper-util's graceful shutdown) was polled on every wake of
//! every connection, about 150 instructions a request.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Sent when a request head was begun but not finished within the header timeout.
const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 16\r\n\r\nRequest Timeout\n";

/// Shortest and longest sweep interval.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

/// One listener's connections and their deadline.
#[derive(Debug)]
pub struct Deadlines {
    /// How long a connection may wait for a request head.
    limit: Duration,
    /// What the coarse clock counts from.
    epoch: Instant,
    /// The coarse clock: milliseconds since `epoch`, as of the last sweep.
    now_ms: AtomicU64,
    /// Every connection since the last sweep dropped the ones that ended.
    watched: Mutex<Vec<Weak<Watch>>>,
    /// Shutting down: sweeps also close idle connections and shut the read side of busy ones.
    draining: AtomicBool,
    /// Connections whose [`Watch`] is alive (their task has not ended).
    open: AtomicUsize,
    /// Told when `open` reaches 0.
    all_closed: tokio::sync::Notify,
}

/// One connection as its deadline sees it.
#[derive(Debug)]
pub struct Watch {
    /// The caller's socket.
    pub(super) stream: TcpStream,
    /// Request bytes arrived since the last response.
    pub(super) partial: AtomicBool,
    /// The coarse time (plus one) since which a request head is awaited; 0: a request is being
    /// answered.
    waiting_since: AtomicU64,
    /// Its read side was shut by a drain.
    read_shut: AtomicBool,
    deadlines: Arc<Deadlines>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.deadlines.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.deadlines.all_closed.notify_waiters();
        }
    }
}

impl Watch {
    /// From now on, a request head is awaited.
    pub fn wait_for_head(&self) {
        let now = self.deadlines.now_ms.load(Ordering::Relaxed);
        self.waiting_since.store(now + 1, Ordering::Relaxed);
    }

    /// A request head arrived: no deadline until its response is written.
    pub fn head_arrived(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }
}

impl Deadlines {
    /// Deadlines of `limit` for one listener.
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            epoch: Instant::now(),
            now_ms: AtomicU64::new(0),
            watched: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            all_closed: tokio::sync::Notify::new(),
        })
    }

    /// Watches `stream`, which waits for its first request head from now.
    pub fn watch(self: &Arc<Self>, stream: TcpStream) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            stream,
            partial: AtomicBool::new(false),
            waiting_since: AtomicU64::new(0),
            read_shut: AtomicBool::new(false),
            deadlines: Arc::clone(self),
        });
        self.open.fetch_add(1, Ordering::AcqRel);
        watch.wait_for_head();
        self.lock().push(Arc::downgrade(&watch));
        watch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Watch>>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How often [`Deadlines::sweep`] looks: an eighth of the limit, within 10 ms and 1 s. A
    /// wait is measured on the coarse clock, so a connection is ended within a tick of the
    /// limit, either side.
    fn tick(&self) -> Duration {
        (self.limit / 8).clamp(MIN_TICK, MAX_TICK)
    }

    /// Ends the connections that have waited for a head longer than the limit, drops those that
    /// ended, and advances the coarse clock. Returns how many were ended.
    pub fn sweep(&self) -> usize {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.store(now, Ordering::Relaxed);
        let limit = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX);
        let draining = self.draining.load(Ordering::Relaxed);
        let mut ended = 0;
        self.lock().retain(|weak| {
            let Some(watch) = weak.upgrade() else {
                return false;
            };
            let since = watch.waiting_since.load(Ordering::Relaxed);
            let idle = since != 0 && !watch.partial.load(Ordering::Relaxed);
            if (since != 0 && now + 1 >= since.saturating_add(limit)) || (draining && idle) {
                watch.waiting_since.store(0, Ordering::Relaxed);
                end(&watch);
                ended += 1;
                return false;
            }
            if draining && since == 0 && !watch.read_shut.swap(true, Ordering::Relaxed) {
                // Being answered: its response goes out, then hyper reads the end and closes.
                // (A head only begun is left to finish, or to its deadline.)
                shut_read(&watch);
            }
            true
        });
        ended
    }

    /// Shutdown: from now on every sweep closes idle connections and lets busy ones end after
    /// their response; returns once no connection is left (the caller bounds the wait).
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        loop {
            let closed = self.all_closed.notified();
            self.sweep();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            // Woken when the last one ends; sweeps again for heads that arrived meanwhile.
            let _ = tokio::time::timeout(self.tick(), closed).await;
        }
    }

    /// Sweeps every tick until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }
}

/// Ends a connection that waited too long: `408` if a request was begun, then both directions
/// shut, so hyper's next read sees the end and the connection task finishes. Best effort,
/// never waits.
fn end(watch: &Watch) {
    use std::os::fd::AsRawFd as _;
    if watch.partial.load(Ordering::Relaxed) {
        let _ = watch.stream.try_write(TIMED_OUT);
    }
    let _ = nix::sys::socket::shutdown(watch.stream.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

/// Shuts the read side of a connection being answered: hyper writes the response, then reads
/// the end and closes the connection.
fn shut_read(watch: &Watch) {
    use std::os::fd::AsRawFd as _;
    let _ = nix::sys::socket::shutdown(watch.stream.as_raw_fd(), nix::sys::socket::Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(deadlines: &Arc<Deadlines>) -> (Arc<Watch>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (deadlines.watch(server), client)
    }

    #[tokio::test]
    async fn a_begun_head_gets_408_an_idle_connection_is_closed_and_a_busy_one_is_left() {
        let deadlines = Deadlines::new(Duration::from_millis(200));
        let (begun, mut begun_client) = pair(&deadlines).await;
        let (idle, mut idle_client) = pair(&deadlines).await;
        let (busy, _busy_client) = pair(&deadlines).await;
        begun.partial.store(true, Ordering::Relaxed);
        busy.head_arrived();
        assert_eq!(deadlines.sweep(), 0, "nobody has waited yet");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(deadlines.sweep(), 2);
        let mut got = Vec::new();
        begun_client.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408 "), "{got:?}");
        let mut got = Vec::new();
        idle_client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "an idle keep-alive gets no answer: {got:?}");
        // The one being answered is still open and watched; once answered, its wait restarts.
        assert_eq!(deadlines.lock().len(), 1);
        busy.wait_for_head();
        assert_eq!(deadlines.sweep(), 0, "its wait restarted at the last sweep");
        drop((begun, idle));
    }

    #[tokio::test]
    async fn ended_connections_are_forgotten() {
        let deadlines = Deadlines::new(Duration::from_secs(60));
        let (watch, mut client) = pair(&deadlines).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(deadlines.lock().len(), 1);
        drop(watch);
        assert_eq!(deadlines.sweep(), 0);
        assert!(deadlines.lock().is_empty());
    }

    #[test]
    fn the_sweep_ticks_at_an_eighth_of_the_limit_within_bounds() {
        let tick = |ms| Deadlines::new(Duration::from_millis(ms)).tick();
        assert_eq!(tick(1000), Duration::from_millis(125));
        assert_eq!(tick(20), MIN_TICK);
        assert_eq!(tick(60_000), MAX_TICK);
    }
}
