//! cgroup id → cgroup path, off the async runtime: a cached path is re-checked with one `stat`;
//! an unknown id is looked up by walking the cgroup2 mount on a blocking thread, one walk shared
//! by every caller waiting for one (single flight), and an id that a walk proved gone is
//! remembered (bounded), since the kernel never reuses a cgroup id while it runs.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use lru::LruCache;

use super::tree::walk;

/// Most cached id → path entries (see [`remember`]).
const CACHE_MAX: usize = 65_536;
/// Most ids remembered as gone (least recently asked forgotten first).
const GONE_MAX: usize = 16_384;

/// One walk of the cgroup2 mount: when it began, and every cgroup it saw.
#[derive(Debug)]
struct Walk {
    began: Instant,
    found: HashMap<u64, Arc<str>>,
}

type SharedWalk = Shared<BoxFuture<'static, Arc<Walk>>>;

/// Lists `ino → path` of every cgroup below a cgroup2 mount (a seam for tests).
type Walker = Arc<dyn Fn(&Path) -> HashMap<u64, Arc<str>> + Send + Sync>;

#[derive(Debug)]
struct State {
    /// id → path, from earlier walks (re-checked before use).
    cache: HashMap<u64, Arc<str>>,
    /// ids a walk that began after they were asked for did not find: gone for good.
    gone: LruCache<u64, ()>,
    /// The walk in progress, if any, and when it began.
    walking: Option<(Instant, SharedWalk)>,
}

/// Resolves cgroup v2 ids (inode numbers of cgroup directories) to paths like `/docker/<id>`.
pub struct CgroupPaths {
    root: Arc<Path>,
    state: Arc<Mutex<State>>,
    walks: Arc<AtomicU64>,
    walker: Walker,
}

impl std::fmt::Debug for CgroupPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupPaths")
            .field("root", &self.root)
            .field("walks", &self.walks())
            .finish_non_exhaustive()
    }
}

impl CgroupPaths {
    /// Paths below the cgroup2 mount `root`.
    pub fn new(root: std::path::PathBuf) -> Self {
        let walker: Walker = Arc::new(|root: &Path| {
            let mut found = HashMap::new();
            walk(root, "", &mut found);
            found
        });
        Self::with(root, GONE_MAX, walker)
    }

    fn with(root: std::path::PathBuf, gone_max: usize, walker: Walker) -> Self {
        Self {
            root: root.into(),
            state: Arc::new(Mutex::new(State {
                cache: HashMap::new(),
                gone: LruCache::new(NonZeroUsize::new(gone_max).unwrap_or(NonZeroUsize::MIN)),
                walking: None,
            })),
            walks: Arc::new(AtomicU64::new(0)),
            walker,
        }
    }

    /// How many walks of the cgroup2 mount were started so far.
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The path of cgroup `id`, relative to the mount and starting with `/`; `None` if it is gone.
    ///
    /// A cached path is re-checked (one `stat` of a kernfs directory): if the cgroup was removed,
    /// or the path now holds another cgroup, the entry is dropped and the id looked up again. An unknown id waits for a walk of the mount on a blocking thread, shared with every
    /// other lookup in flight; if a walk that began after this call does not find it, the cgroup
    /// is gone, and the id is answered `None` at once from then on.
    pub async fn resolve(&self, id: u64) -> Option<Arc<str>> {
        let asked = Instant::now();
        let cached = {
            let mut state = self.lock();
            if state.gone.get(&id).is_some() {
                return None;
            }
            state.cache.get(&id).cloned()
        };
        if let Some(path) = cached {
            if inode(&self.root, &path) == Some(id) {
                return Some(path);
            }
            self.lock().cache.remove(&id);
        }
        // At most two walks: one already under way may have begun before the caller's cgroup
        // was made, so missing the id proves nothing; any walk begun after it ended does.
        for _ in 0..2 {
            let walk = self.walk().await;
            if let Some(path) = walk.found.get(&id) {
                return Some(Arc::clone(path));
            }
            if walk.began >= asked {
                break;
            }
        }
        self.lock().gone.put(id, ());
        None
    }

    /// [`Self::resolve`] for a thread of its own outside the runtime (the egress guard's reporter):
    /// the cached path if it still holds `id`, else a walk of the mount on the calling thread.
    pub fn resolve_blocking(&self, id: u64) -> Option<Arc<str>> {
        let cached = self.lock().cache.get(&id).cloned();
        if let Some(path) = cached
            && inode(&self.root, &path) == Some(id)
        {
            return Some(path);
        }
        self.walks.fetch_add(1, Ordering::Relaxed);
        let found = (self.walker)(&self.root);
        let path = found.get(&id).cloned();
        remember(&mut self.lock().cache, &found, CACHE_MAX);
        path
    }

    /// The walk in progress, or a new one: a walk on a blocking thread that fills the cache.
    fn walk(&self) -> SharedWalk {
        let mut state = self.lock();
        if let Some((_, walk)) = &state.walking {
            return walk.clone();
        }
        let began = Instant::now();
        let (root, shared) = (Arc::clone(&self.root), Arc::clone(&self.state));
        let walker = Arc::clone(&self.walker);
        self.walks.fetch_add(1, Ordering::Relaxed);
        let task = tokio::task::spawn_blocking(move || walker(&root));
        let walk = async move {
            // A walk that cannot run (the runtime is shutting down) found nothing.
            let found = task.await.unwrap_or_default();
            let mut state = lock(&shared);
            state.walking = None;
            remember(&mut state.cache, &found, CACHE_MAX);
            drop(state);
            Arc::new(Walk { began, found })
        }
        .boxed()
        .shared();
        state.walking = Some((began, walk.clone()));
        walk
    }
}

/// Adds what a walk `found` to `cache`, which never holds more than `max` entries: when they
/// would not fit, the older entries go first (a walk is the newest truth about the tree).
fn remember(cache: &mut HashMap<u64, Arc<str>>, found: &HashMap<u64, Arc<str>>, max: usize) {
    if cache.len() + found.len() > max {
        cache.clear();
    }
    let room = max.saturating_sub(cache.len());
    cache.extend(
        found
            .iter()
            .take(room)
            .map(|(id, path)| (*id, Arc::clone(path))),
    );
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The inode of the cgroup directory at `path` below `root`.
fn inode(root: &Path, path: &str) -> Option<u64> {
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
