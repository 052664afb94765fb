//! Bounds on token-file reads: one at a time per container, [`MAX_CONCURRENT_READS`] in all.
//!
//! A read runs on tokio's blocking pool and cannot be cancelled: a file on a hung FUSE mount keeps
//! its thread until the mount answers. The permits are held by the blocking task itself, so a read
//! still stuck after its caller gave up keeps counting; later requests wait for a permit until
//! their deadline and are then refused without starting another read. A container can thus hold
//! at most one blocking thread, and all containers together [`MAX_CONCURRENT_READS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use super::TokenFileError;
use crate::creds::Secret;

/// Most token-file reads in progress at once. A read takes microseconds, and the route is called
/// about once an hour per SDK, so this binds only when reads hang; it keeps hung reads from
/// taking more than this many of the blocking pool's 512 threads.
pub const MAX_CONCURRENT_READS: usize = 16;

/// The read permits.
#[derive(Debug)]
pub struct ReadLimits {
    all: Arc<Semaphore>,
    /// One permit per container with a read in progress or waited for; removed when unused.
    containers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A container's place in [`ReadLimits::containers`], given up on drop (its entry is removed when
/// nobody else holds or waits for it).
#[derive(Debug)]
struct Slot {
    limits: Arc<ReadLimits>,
    container: String,
    semaphore: Arc<Semaphore>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut containers = self.limits.lock();
        // Two references left: the map's and this slot's (a permit of it is dropped before).
        if containers
            .get(&self.container)
            .is_some_and(|s| Arc::ptr_eq(s, &self.semaphore) && Arc::strong_count(s) == 2)
        {
            containers.remove(&self.container);
        }
    }
}

/// Permission to run one read; held by the read until it ends.
#[derive(Debug)]
struct ReadPermit {
    _all: OwnedSemaphorePermit,
    // Declared before the slot: released first, so the slot sees whether anyone else is left.
    _container: OwnedSemaphorePermit,
    _slot: Slot,
}

impl ReadLimits {
    /// Limits of one read per container and `max` in all.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            all: Arc::new(Semaphore::new(max)),
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Containers with a read in progress or waited for.
    #[cfg(test)]
    pub fn containers(&self) -> usize {
        self.lock().len()
    }

    /// Runs `read` for `container` on a blocking thread once a permit is free, and waits for it,
    /// all within `timeout`: [`TokenFileError::ContainerBusy`] or
    /// [`TokenFileError::TooManyReads`] when no permit was free in time (nothing was started),
    /// [`TokenFileError::Timeout`] when the read did not finish in time (it keeps its permits
    /// until it does).
    pub async fn run<F>(
        self: &Arc<Self>,
        container: &str,
        timeout: Duration,
        read: F,
    ) -> Result<Secret, TokenFileError>
    where
        F: FnOnce() -> Result<Secret, TokenFileError> + Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        let permit = self.acquire(container, deadline).await?;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        });
        match timeout_at(deadline, task).await {
            Ok(Ok(read)) => read,
            // The blocking task panicked (it does not) or the runtime is shutting down.
            Ok(Err(_)) | Err(_) => Err(TokenFileError::Timeout),
        }
    }

    async fn acquire(
        self: &Arc<Self>,
        container: &str,
        deadline: Instant,
    ) -> Result<ReadPermit, TokenFileError> {
        let slot = {
            let mut containers = self.lock();
            let semaphore = containers
                .entry(container.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(1)));
            Slot {
                limits: Arc::clone(self),
                container: container.to_owned(),
                semaphore: Arc::clone(semaphore),
            }
        };
        let mine = timeout_at(deadline, Arc::clone(&slot.semaphore).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(TokenFileError::ContainerBusy)?;
        let all = timeout_at(deadline, Arc::clone(&self.all).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(TokenFileError::TooManyReads)?;
        Ok(ReadPermit {
            _all: all,
            _container: mine,
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const SHORT: Duration = Duration::from_millis(150);
    const LONG: Duration = Duration::from_secs(10);

    /// A read that blocks its thread until the returned sender is dropped, like one on a hung
    /// FUSE mount.
    fn hung() -> (
        mpsc::Sender<()>,
        impl FnOnce() -> Result<Secret, TokenFileError> + Send + 'static,
    ) {
        let (release, wait) = mpsc::channel::<()>();
        (release, move || {
            let _ = wait.recv();
            Ok(Secret::new("late".into()))
        })
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "the shape of a read, passed where one is expected"
    )]
    fn quick() -> Result<Secret, TokenFileError> {
        Ok(Secret::new("token".into()))
    }

    /// Waits until no container is tracked: a read that ended lets the next one start before it
    /// has given up its place (a moment later, on its own thread).
    async fn assert_no_container_left(limits: &ReadLimits) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while limits.containers() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} containers left behind",
                limits.containers()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_hung_read_holds_its_container_not_the_others() {
        let limits = ReadLimits::new(4);
        let (release, read) = hung();
        let stuck = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.run("a", SHORT, read).await })
        };
        assert!(matches!(stuck.await, Ok(Err(TokenFileError::Timeout))));
        // The read is still running: the container's next read does not start.
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let next = limits
            .run("a", SHORT, move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                quick()
            })
            .await;
        assert!(
            matches!(next, Err(TokenFileError::ContainerBusy)),
            "{next:?}"
        );
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
        // Another container is served meanwhile.
        assert!(limits.run("b", SHORT, quick).await.is_ok());
        drop(release);
        // Once the hung read ends, the container is served again and nothing is left behind.
        assert!(limits.run("a", LONG, quick).await.is_ok());
        assert_no_container_left(&limits).await;
    }

    #[tokio::test]
    async fn at_most_max_reads_in_all() {
        let limits = ReadLimits::new(2);
        let mut releases = Vec::new();
        for container in ["a", "b"] {
            let (release, read) = hung();
            releases.push(release);
            let got = limits.run(container, SHORT, read).await;
            assert!(matches!(got, Err(TokenFileError::Timeout)), "{got:?}");
        }
        let third = limits.run("c", SHORT, quick).await;
        assert!(
            matches!(third, Err(TokenFileError::TooManyReads)),
            "{third:?}"
        );
        releases.pop();
        assert!(limits.run("c", LONG, quick).await.is_ok());
        drop(releases);
        assert!(limits.run("a", LONG, quick).await.is_ok());
        assert_no_container_left(&limits).await;
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_container_take_turns() {
        let limits = ReadLimits::new(4);
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (limits, in_flight, most) = (
                    Arc::clone(&limits),
                    Arc::clone(&in_flight),
                    Arc::clone(&most),
                );
                tokio::spawn(async move {
                    limits
                        .run("a", LONG, move || {
                            let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            most.fetch_max(now + 1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                            in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            quick()
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await, Ok(Ok(_))));
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_no_container_left(&limits).await;
    }
}
