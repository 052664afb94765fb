//! When to classify host cgroups again: inotify on every cgroup v2 directory below the scanned
//! roots (cgroupfs reports a subdirectory made or removed as `IN_CREATE` / `IN_DELETE`) and on the
//! mapping file's folder, instead of walking the tree every second.
//!
//! Each directory is watched before it is listed, so a subdirectory made meanwhile is either
//! listed by the next scan or reported. A lost event (queue overflow) is still an event, and the
//! caller rescans slowly anyway as a safety net.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// What changes a cgroup directory's classification: subdirectories made, removed (or moved).
const CGROUP_EVENTS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_ONLYDIR);
/// A mapping file rewritten, renamed over, or swapped (a Kubernetes `ConfigMap`'s `..data` link).
const MAPPING_EVENTS: AddWatchFlags = CGROUP_EVENTS.union(AddWatchFlags::IN_CLOSE_WRITE);

/// Why the tree cannot be watched (then the caller polls).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No inotify instance (`fs.inotify.max_user_instances`).
    #[error("inotify_init failed: {0}")]
    Init(#[source] Errno),
    /// A directory cannot be watched (ENOSPC: `fs.inotify.max_user_watches` reached).
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// What the kernel said.
        source: Errno,
    },
    /// Waiting for or reading events failed.
    #[error("reading inotify events failed: {0}")]
    Read(#[source] Errno),
}

/// inotify watches on the cgroup subtrees (and the mapping file's folder).
#[derive(Debug)]
pub struct CgroupWatch {
    inotify: Inotify,
    roots: Vec<PathBuf>,
    mapping_dir: Option<PathBuf>,
}

impl CgroupWatch {
    /// Watches nothing yet: `roots` are cgroup directories, `mapping_dir` the mapping file's folder.
    pub fn new(roots: Vec<PathBuf>, mapping_dir: Option<PathBuf>) -> Result<Self, WatchError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(WatchError::Init)?;
        Ok(Self {
            inotify,
            roots,
            mapping_dir,
        })
    }

    /// Watches every directory below the roots that exists now (again: a directory already watched
    /// costs one cheap call); returns how many.
    pub fn watch_all(&self) -> Result<usize, WatchError> {
        let mut count = 0;
        if let Some(dir) = &self.mapping_dir {
            self.add(dir, MAPPING_EVENTS)?;
        }
        for root in &self.roots {
            self.watch_tree(root, &mut count)?;
        }
        Ok(count)
    }

    fn watch_tree(&self, dir: &Path, count: &mut usize) -> Result<(), WatchError> {
        match self.add(dir, CGROUP_EVENTS) {
            Ok(()) => *count += 1,
            // Removed meanwhile (or a root that does not exist yet): nothing to watch below it.
            Err(WatchError::Watch {
                source: Errno::ENOENT | Errno::ENOTDIR,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.watch_tree(&entry.path(), count)?;
            }
        }
        Ok(())
    }

    fn add(&self, dir: &Path, mask: AddWatchFlags) -> Result<(), WatchError> {
        self.inotify
            .add_watch(dir, mask)
            .map(drop)
            .map_err(|source| WatchError::Watch {
                path: dir.to_owned(),
                source,
            })
    }

    /// Waits up to `timeout` for a change; `true` if there was one. Every queued event is read.
    pub fn wait(&self, timeout: Duration) -> Result<bool, WatchError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(WatchError::Read(e)),
        }
        let mut changed = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => changed = true,
                Ok(_) | Err(Errno::EAGAIN) => return Ok(changed),
                Err(e) => return Err(WatchError::Read(e)),
            }
        }
    }
}

#[cfg(test)]
#[path = "cgroup_watch_tests.rs"]
mod tests;
