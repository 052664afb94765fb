//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: reading a container's token file as the SDK inside
//! it does, through the container's root (`/proc/<main pid>/root`), never outside it.
//!
//! The root is reached through a `/proc/<pid>` directory opened first and checked to be in the
//! container's cgroup: that descriptor keeps meaning that process, so a pid reused after the
//! container stopped (before the daemon heard of it) cannot lend another process's root.
//!
//! Read on every request (a rotated file is seen at once; the file is small and the route is
//! called about once an hour per SDK). The container controls the path and the file, so: the path
//! is resolved with `openat2(RESOLVE_IN_ROOT)` (`..` and absolute symlinks stay inside the root,
//! magic links such as `/proc/self/root` are refused) into an `O_PATH` descriptor, which opens
//! nothing; only if that inode is a regular file is it opened for reading (through
//! `/proc/self/fd`, so the very same inode), never a device node a container with `CAP_MKNOD`
//! put there, nor a FIFO; and at most [`MAX_BYTES`] of it is read. Reads are bounded in number
//! (one at a time per container, [`MAX_CONCURRENT_READS`] in all), so files on a hung FUSE mount
//! cannot take the blocking thread pool.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};
use procfs::{FromRead as _, ProcessCGroups};
use thiserror::Error;

use crate::cgroup::{is_within, v2_path};
use crate::creds::Secret;

#[path = "token_file_limit.rs"]
mod limit;

pub use limit::{MAX_CONCURRENT_READS, ReadLimits};

/// The largest token file read: EKS Pod Identity's tokens are JWTs of about 1 KiB, and no
/// HTTP header carrying one could be much larger.
pub const MAX_BYTES: usize = 16 * 1024;

/// The longest a read may take (a file on a hung FUSE mount must not hold the caller forever).
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a token file could not be read.
#[derive(Debug, Error)]
pub enum TokenFileError {
    /// The path is relative: it would depend on the SDK process's working directory.
    #[error("the path is not absolute")]
    NotAbsolute,
    /// The container's main process is not known, so there is no root to read it through.
    #[error("the container's main process is not known")]
    NoProcess,
    /// The container's process or root (`/proc/<pid>`, its `cgroup`, its `root`) could not be
    /// opened: it has stopped.
    #[error("cannot open {path}: {source}")]
    Root {
        /// What could not be opened.
        path: String,
        /// The error.
        source: Errno,
    },
    /// The process's cgroup list is not what the kernel writes (procfs cannot parse it).
    #[error("cannot parse /proc/{pid}/cgroup: {source}")]
    Cgroups {
        /// The process id.
        pid: u32,
        /// procfs's error.
        source: procfs::ProcError,
    },
    /// The process is not in the container's cgroup (its pid was reused).
    #[error("process {pid} is not in the container's cgroup")]
    NotTheContainer {
        /// The process id.
        pid: u32,
    },
    /// The file could not be opened inside the root (missing, a magic link, not permitted).
    #[error("cannot open it inside the container: {0}")]
    Open(Errno),
    /// Its type could not be read.
    #[error("cannot stat it: {0}")]
    Stat(Errno),
    /// It is a directory, FIFO, socket or device (it was not opened).
    #[error("it is not a regular file")]
    NotAFile,
    /// The regular file found could not be opened for reading.
    #[error("cannot open it for reading: {0}")]
    Reopen(Errno),
    /// What was opened for reading is not the inode that was checked (it cannot happen).
    #[error("it changed while being opened")]
    Changed,
    /// It is larger than [`MAX_BYTES`].
    #[error("it is larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// Reading it failed.
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// It is empty (or only a line break).
    #[error("it is empty")]
    Empty,
    /// It is not UTF-8 text, or holds a line break or other control character inside (which no
    /// SDK can send as a header).
    #[error("it is not a single line of text")]
    NotText,
    /// Reading it took longer than [`TIMEOUT`].
    #[error("reading it took longer than {TIMEOUT:?}")]
    Timeout,
    /// An earlier read of this container's token file has not finished within [`TIMEOUT`] (a
    /// hung file system?): this one was not started.
    #[error("an earlier read of this container's token file is still in progress")]
    ContainerBusy,
    /// [`MAX_CONCURRENT_READS`] reads of token files were in progress for [`TIMEOUT`]: this one
    /// was not started.
    #[error("{MAX_CONCURRENT_READS} token file reads are already in progress")]
    TooManyReads,
}

/// The daemon's bounds on token-file reads.
static LIMITS: LazyLock<Arc<ReadLimits>> = LazyLock::new(|| ReadLimits::new(MAX_CONCURRENT_READS));

/// Reads the token file `path` (inside the container) of the container `container_id` whose main
/// process is `pid` and whose verified cgroup is `cgroup` (when known), on a blocking thread,
/// within [`TIMEOUT`]; refused without starting when the container's previous read or
/// [`MAX_CONCURRENT_READS`] reads are still in progress by then.
pub async fn read(
    pid: Option<u32>,
    container_id: &str,
    cgroup: Option<&str>,
    path: &str,
) -> Result<Secret, TokenFileError> {
    let pid = pid.ok_or(TokenFileError::NoProcess)?;
    let (id, cgroup, path) = (
        container_id.to_owned(),
        cgroup.map(str::to_owned),
        path.to_owned(),
    );
    LIMITS
        .run(container_id, TIMEOUT, move || {
            read_as(pid, &id, cgroup.as_deref(), &path)
        })
        .await
}

/// Reads `path` inside the root of process `pid`, once that process is found to be in the
/// container (see [`in_container`]).
fn read_as(
    pid: u32,
    container_id: &str,
    container_cgroup: Option<&str>,
    path: &str,
) -> Result<Secret, TokenFileError> {
    if !path.starts_with('/') {
        return Err(TokenFileError::NotAbsolute);
    }
    let proc_dir = format!("/proc/{pid}");
    let gone = |what: &str| {
        let path = format!("{proc_dir}{what}");
        move |source| TokenFileError::Root { path, source }
    };
    let proc_fd = open(
        proc_dir.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(gone(""))?;
    let cgroup = openat(
        &proc_fd,
        "cgroup",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(gone("/cgroup"))?;
    let cgroups = ProcessCGroups::from_read(std::fs::File::from(cgroup).take(64 * 1024))
        .map_err(|source| TokenFileError::Cgroups { pid, source })?;
    if !in_container(&cgroups, container_id, container_cgroup) {
        return Err(TokenFileError::NotTheContainer { pid });
    }
    let root = openat(
        &proc_fd,
        "root",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(gone("/root"))?;
    read_at(&root, path)
}

/// Whether a process's cgroups (`/proc/<pid>/cgroup`) put it in the container: in its verified
/// cgroup v2 `cgroup` or below it when the index recorded one (a look-alike cgroup that merely
/// names the container, as after the pid was reused, is not in it); otherwise (cgroup v1 hosts, a
/// cgroup not verified) in a cgroup whose path names `container_id` (Docker's `…/<id>` and
/// `docker-<id>.scope` alike).
fn in_container(cgroups: &ProcessCGroups, container_id: &str, cgroup: Option<&str>) -> bool {
    if container_id.is_empty() {
        return false;
    }
    match cgroup.map(|c| c.trim_end_matches('/')) {
        // The root cgroup is no container's.
        Some("") => false,
        Some(own) => v2_path(cgroups).is_some_and(|path| is_within(path, own)),
        None => cgroups.0.iter().any(|c| c.pathname.contains(container_id)),
    }
}

/// Reads `path` as if `root` were `/`: the token, without one trailing line break (the tests
/// read through a root of their own; the daemon through a process's, [`read`]).
#[cfg(test)]
pub fn read_in(root: &std::path::Path, path: &str) -> Result<Secret, TokenFileError> {
    if !path.starts_with('/') {
        return Err(TokenFileError::NotAbsolute);
    }
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| TokenFileError::Root {
        path: root.display().to_string(),
        source,
    })?;
    read_at(&root_fd, path)
}

/// Reads `path` as if the directory `root` were `/`.
fn read_at(root: &OwnedFd, path: &str) -> Result<Secret, TokenFileError> {
    // O_PATH resolves the path and pins its inode without opening the file: no device driver's
    // open, no FIFO's, happens before the type is known.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let pinned = openat2(root, path, how).map_err(TokenFileError::Open)?;
    let stat = fstat(&pinned).map_err(TokenFileError::Stat)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(TokenFileError::NotAFile);
    }
    // Reopened through the descriptor, not the path: the same inode, whatever the container
    // renamed meanwhile (and an inode's type never changes).
    let fd = open(
        format!("/proc/self/fd/{}", pinned.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(TokenFileError::Reopen)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(TokenFileError::Read)?;
    if meta.dev() != stat.st_dev || meta.ino() != stat.st_ino || !meta.is_file() {
        return Err(TokenFileError::Changed);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(MAX_BYTES));
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(TokenFileError::Read)?;
    if bytes.len() > MAX_BYTES {
        return Err(TokenFileError::TooLarge);
    }
    token(bytes)
}

/// The token a file holds: one trailing `\n` or `\r\n` (an editor's) is not part of it.
fn token(mut bytes: Vec<u8>) -> Result<Secret, TokenFileError> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(TokenFileError::Empty);
    }
    let text = String::from_utf8(bytes).map_err(|_| TokenFileError::NotText)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(TokenFileError::NotText);
    }
    Ok(Secret::new(text))
}

#[cfg(test)]
#[path = "token_file_tests.rs"]
mod tests;
