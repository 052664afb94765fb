//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: reading a container's token file as the SDK inside
//! it does, through the container's root (`/proc/<main pid>/root`), never outside it.
//!
//! Read on every request (a rotated file is seen at once; the file is small and the route is
//! called about once an hour per SDK). The container controls the path and the file, so: the path
//! is resolved with `openat2(RESOLVE_IN_ROOT)` (`..` and absolute symlinks stay inside the root,
//! magic links such as `/proc/self/root` are refused), only a regular file is read, opened
//! without blocking on a FIFO, and at most [`MAX_BYTES`] of it.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::creds::Secret;

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
    /// The container's root (`/proc/<pid>/root`) could not be opened: it has stopped.
    #[error("cannot open the container's root {root}: {source}")]
    Root {
        /// `/proc/<pid>/root`.
        root: String,
        /// The error.
        source: Errno,
    },
    /// The file could not be opened inside the root (missing, a magic link, not permitted).
    #[error("cannot open it inside the container: {0}")]
    Open(Errno),
    /// It is a directory, FIFO, socket or device.
    #[error("it is not a regular file")]
    NotAFile,
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
}

/// Reads the token file `path` (inside the container) of the container whose main process is
/// `pid`, on a blocking thread, within [`TIMEOUT`].
pub async fn read(pid: Option<u32>, path: &str) -> Result<Secret, TokenFileError> {
    let pid = pid.ok_or(TokenFileError::NoProcess)?;
    let path = path.to_owned();
    let root = format!("/proc/{pid}/root");
    let task = tokio::task::spawn_blocking(move || read_in(Path::new(&root), &path));
    match tokio::time::timeout(TIMEOUT, task).await {
        Ok(Ok(read)) => read,
        // The blocking task panicked (it does not) or the runtime is shutting down.
        Ok(Err(_)) | Err(_) => Err(TokenFileError::Timeout),
    }
}

/// Reads `path` as if `root` were `/`: the token, without one trailing line break.
pub fn read_in(root: &Path, path: &str) -> Result<Secret, TokenFileError> {
    if !path.starts_with('/') {
        return Err(TokenFileError::NotAbsolute);
    }
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| TokenFileError::Root {
        root: root.display().to_string(),
        source,
    })?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&root_fd, path, how).map_err(TokenFileError::Open)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(TokenFileError::Read)?;
    if !meta.is_file() {
        return Err(TokenFileError::NotAFile);
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
#[path = "ecs_token_file_tests.rs"]
mod tests;
