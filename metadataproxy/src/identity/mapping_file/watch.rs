//! Watching the mapping file: reload on change, keep the last good mapping on failure.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::{Chain, Mapping, MappingError, Origin, parse_bytes};

/// What one reload check did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file looks as at the last check (or its bytes equal the mapping in force).
    Unchanged,
    /// A new mapping is in force.
    Reloaded {
        /// Its number of entries.
        entries: usize,
    },
    /// The file changed but could not be used; the previous mapping stays in force.
    Failed(MappingError),
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File {
        mtime: Option<SystemTime>,
        ctime: (i64, i64),
        size: u64,
        dev: u64,
        ino: u64,
    },
    Error(io::ErrorKind),
}

impl Seen {
    fn of(meta: &io::Result<Metadata>) -> Self {
        match meta {
            Ok(m) => Self::File {
                mtime: m.modified().ok(),
                ctime: (m.ctime(), m.ctime_nsec()),
                size: m.size(),
                dev: m.dev(),
                ino: m.ino(),
            },
            Err(e) => Self::Error(e.kind()),
        }
    }
}

#[derive(Debug)]
struct WatchState {
    seen: Seen,
    /// The bytes of the mapping in force.
    applied: Vec<u8>,
    failed: bool,
}

/// The mapping file and the mapping currently in force; share it in an `Arc`.
#[derive(Debug)]
pub struct MappingFile {
    path: PathBuf,
    current: RwLock<Arc<Mapping>>,
    state: Mutex<WatchState>,
}

impl MappingFile {
    /// Reads and parses the file; the error names the file and, for JSON, the line and column.
    pub fn load(path: impl Into<PathBuf>) -> Result<MappingFile, MappingError> {
        let path = path.into();
        let read_err = |source| MappingError::Read {
            origin: Origin(Some(path.clone())),
            source,
        };
        let meta = fs::metadata(&path);
        let seen = Seen::of(&meta);
        meta.map_err(read_err)?;
        let bytes = fs::read(&path).map_err(read_err)?;
        let mapping = parse_bytes(&bytes).map_err(|e| e.with_path(&path))?;
        tracing::info!(path = %path.display(), entries = mapping.len(), "role mapping file loaded");
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(mapping)),
            state: Mutex::new(WatchState {
                seen,
                applied: bytes,
                failed: false,
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapping in force (a cheap `Arc` clone).
    pub fn current(&self) -> Arc<Mapping> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// True when the last check found the file unusable (the previous mapping is still in force).
    pub fn last_check_failed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
    }

    /// Re-reads the file if its metadata changed and applies it if its bytes changed.
    /// Blocking file I/O: call from a blocking context.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = fs::metadata(&self.path);
        let seen = Seen::of(&meta);
        if seen == state.seen {
            return ReloadOutcome::Unchanged;
        }
        state.seen = seen;
        let bytes = match meta.and_then(|_| fs::read(&self.path)) {
            Ok(bytes) => bytes,
            Err(source) => {
                return self.fail(
                    &mut state,
                    MappingError::Read {
                        origin: Origin(None),
                        source,
                    },
                );
            }
        };
        if bytes == state.applied {
            if state.failed {
                tracing::info!(path = %self.path.display(), "role mapping file is back to the mapping in force");
            }
            state.failed = false;
            return ReloadOutcome::Unchanged;
        }
        match parse_bytes(&bytes) {
            Ok(mapping) => {
                let entries = mapping.len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(mapping);
                state.applied = bytes;
                state.failed = false;
                tracing::info!(path = %self.path.display(), entries, "role mapping file reloaded");
                ReloadOutcome::Reloaded { entries }
            }
            Err(e) => self.fail(&mut state, e),
        }
    }

    fn fail(&self, state: &mut WatchState, error: MappingError) -> ReloadOutcome {
        let error = error.with_path(&self.path);
        state.failed = true;
        tracing::error!(path = %self.path.display(), error = %Chain(&error), "role mapping reload failed; keeping the previous mapping");
        ReloadOutcome::Failed(error)
    }

    /// Checks the file every `every` (at least 1 ms) on the blocking pool, until the task is aborted;
    /// `on_reload` gets each newly applied mapping. Must be called inside a Tokio runtime.
    pub fn spawn_reloader(
        self: Arc<Self>,
        every: Duration,
        on_reload: impl Fn(Arc<Mapping>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate, and the file was just loaded
            loop {
                ticks.tick().await;
                let this = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                    Ok(ReloadOutcome::Reloaded { .. }) => on_reload(self.current()),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(path = %self.path.display(), error = %e, "role mapping reload task failed");
                    }
                }
            }
        })
    }
}
