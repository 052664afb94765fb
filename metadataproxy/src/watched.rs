//! Files the daemon follows while it runs (the role mapping, the role policy): reloaded when
//! they change — an atomic rename and a Kubernetes `ConfigMap` symlink swap included — and, when a
//! new version cannot be used, the last good one kept in force and the failure logged once.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// What a followed file holds, parsed.
pub trait Watchable: fmt::Debug + Send + Sync + Sized + 'static {
    /// Why a version of the file cannot be used.
    type Error: std::error::Error + Send + Sync + 'static;
    /// What the file is, for log lines (`role mapping file`).
    const WHAT: &'static str;
    /// Parses one version of the file.
    fn parse(bytes: &[u8]) -> Result<Self, Self::Error>;
    /// The error for a file that cannot be read.
    fn read_error(source: io::Error) -> Self::Error;
    /// `error`, naming the file it is about.
    fn with_path(error: Self::Error, path: &Path) -> Self::Error;
    /// Its number of entries (or rules), for log lines.
    fn entries(&self) -> usize;
}

/// What one reload check did.
#[derive(Debug)]
pub enum ReloadOutcome<E> {
    /// The file looks as at the last check (or its bytes equal the version in force).
    Unchanged,
    /// A new version is in force.
    Reloaded {
        /// Its number of entries.
        entries: usize,
    },
    /// The file changed but could not be used; the previous version stays in force.
    Failed(E),
}

/// An error and its sources on one line, for logs.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
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
    /// The bytes of the version in force.
    applied: Vec<u8>,
    failed: bool,
}

/// A followed file and the version of it in force; share it in an `Arc`.
#[derive(Debug)]
pub struct WatchedFile<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
    state: Mutex<WatchState>,
}

impl<T: Watchable> WatchedFile<T> {
    /// Reads and parses the file; the error names the file (and where in it, when parsing says).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, T::Error> {
        let path = path.into();
        let read_err = |source| T::with_path(T::read_error(source), &path);
        let meta = fs::metadata(&path);
        let seen = Seen::of(&meta);
        meta.map_err(read_err)?;
        let bytes = fs::read(&path).map_err(read_err)?;
        let parsed = T::parse(&bytes).map_err(|e| T::with_path(e, &path))?;
        tracing::info!(path = %path.display(), entries = parsed.entries(), "{} loaded", T::WHAT);
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(parsed)),
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

    /// The version in force (a cheap `Arc` clone).
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// True when the last check found the file unusable (the previous version is still in force).
    pub fn last_check_failed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
    }

    /// Re-reads the file if its metadata changed and applies it if its bytes changed.
    /// Blocking file I/O: call from a blocking context.
    pub fn reload_if_changed(&self) -> ReloadOutcome<T::Error> {
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
                return self.fail(&mut state, T::read_error(source));
            }
        };
        if bytes == state.applied {
            if state.failed {
                tracing::info!(path = %self.path.display(), "{} is back to the version in force", T::WHAT);
            }
            state.failed = false;
            return ReloadOutcome::Unchanged;
        }
        match T::parse(&bytes) {
            Ok(parsed) => {
                let entries = parsed.entries();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(parsed);
                // A mapping or a policy changed: what connections remembered may no longer hold.
                crate::generation::bump();
                state.applied = bytes;
                state.failed = false;
                tracing::info!(path = %self.path.display(), entries, "{} reloaded", T::WHAT);
                ReloadOutcome::Reloaded { entries }
            }
            Err(e) => self.fail(&mut state, e),
        }
    }

    fn fail(&self, state: &mut WatchState, error: T::Error) -> ReloadOutcome<T::Error> {
        let error = T::with_path(error, &self.path);
        state.failed = true;
        tracing::error!(path = %self.path.display(), error = %ErrorChain(&error), "{} reload failed; keeping the previous version", T::WHAT);
        ReloadOutcome::Failed(error)
    }

    /// Checks the file every `every` (at least 1 ms) on the blocking pool, until the task is aborted;
    /// `on_reload` gets each newly applied version. Must be called inside a Tokio runtime.
    pub fn spawn_reloader(
        self: Arc<Self>,
        every: Duration,
        on_reload: impl Fn(Arc<T>) + Send + 'static,
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
                        tracing::error!(path = %self.path.display(), error = %e, "{} reload task failed", T::WHAT);
                    }
                }
            }
        })
    }
}
