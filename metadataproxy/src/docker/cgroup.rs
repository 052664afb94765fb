//! The cgroup a Docker container really runs in, read from its main process when it is indexed
//! (`State.Pid` → `/proc/<pid>/cgroup`, the cgroup v2 line `0::<path>`): identification by
//! cgroup then accepts a caller only in that cgroup or below it, never a look-alike elsewhere.
//!
//! Docker does not report the cgroup itself, and a name in a path proves nothing (anyone with a
//! delegated cgroup subtree can create `docker-<id>.scope`). The path is kept only if one of its
//! segments names this container (the pid may have been reused by another process by the time it
//! is read), and trimmed to the deepest such segment (the main process may sit in a child of the
//! container's cgroup, such as `init.scope`).

use std::path::Path;

use procfs::ProcessCGroups;
use procfs::process::Process;
use thiserror::Error;

use crate::cgroup::{named_ids, v2_path};

/// Why a container's cgroup could not be verified: it cannot be identified by cgroup.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CgroupError {
    /// Docker reports no main process (it is not running).
    #[error("Docker reports no main process")]
    NoProcess,
    /// The process's cgroup file cannot be read (it has exited, or lives in another pid namespace)
    /// or parsed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The process has no cgroup v2 membership (no `0::` line): a host without cgroup v2.
    #[error("process {pid} has no cgroup v2 entry (`0::`) in /proc/{pid}/cgroup")]
    NoV2 {
        /// The main process.
        pid: u32,
    },
    /// The process's cgroup is outside the daemon's cgroup namespace (`/..` in its path).
    #[error("process {pid}'s cgroup {cgroup} is outside the daemon's cgroup namespace")]
    OutsideNamespace {
        /// The main process.
        pid: u32,
        /// Its cgroup, as the daemon sees it.
        cgroup: String,
    },
    /// No segment of the process's cgroup names the container: the pid is another process now.
    #[error("process {pid}'s cgroup {cgroup} does not name the container (the pid was reused?)")]
    NotTheContainer {
        /// The main process.
        pid: u32,
        /// Its cgroup.
        cgroup: String,
    },
}

/// The cgroup of container `id`, whose main process is `pid`, read under `proc` (`/proc`).
pub fn of_main_process(proc: &Path, pid: Option<u32>, id: &str) -> Result<String, CgroupError> {
    let pid = pid.ok_or(CgroupError::NoProcess)?;
    let dir = proc.join(pid.to_string());
    let cgroups = Process::new_with_root(dir.clone())
        .and_then(|p| p.cgroups())
        .map_err(|e| CgroupError::Read {
            path: dir.join("cgroup").display().to_string(),
            reason: e.to_string(),
        })?;
    container_cgroup(&cgroups, pid, id)
}

/// The cgroup of container `id` from its main process's `/proc/<pid>/cgroup`: the v2 path (`0::`),
/// trimmed after its deepest segment naming `id`.
pub fn container_cgroup(
    cgroups: &ProcessCGroups,
    pid: u32,
    id: &str,
) -> Result<String, CgroupError> {
    let path = v2_path(cgroups)
        .ok_or(CgroupError::NoV2 { pid })?
        .trim_end();
    if !path.starts_with('/') || path.split('/').any(|s| s == ".." || s == ".") {
        return Err(CgroupError::OutsideNamespace {
            pid,
            cgroup: path.to_owned(),
        });
    }
    let segments: Vec<&str> = path.split('/').collect();
    let deepest = segments
        .iter()
        .rposition(|seg| !id.is_empty() && named_ids(seg).any(|named| named == id));
    match deepest {
        Some(last) => Ok(segments[..=last].join("/")),
        None => Err(CgroupError::NotTheContainer {
            pid,
            cgroup: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use procfs::FromRead as _;

    use super::*;

    const ID: &str = "3f2a9d6c1b8e4f7a0c5d2e9b6a3f8c1d4e7b0a5c2f9d6e3b8a1c4f7d0e5b2a9c";
    const OTHER: &str = "7be7ca56452ce0f69575654683e3b8cdc61d8898d06caf92fbf5ffffcd856bd7";

    #[test]
    fn the_cgroup_is_trimmed_after_the_deepest_segment_naming_the_container() {
        let cases: &[(String, Result<String, &str>)] = &[
            // cgroupfs driver, hybrid host (v1 controllers beside the v2 line).
            (
                format!("4:memory:/docker/{ID}\n0::/docker/{ID}\n"),
                Ok(format!("/docker/{ID}")),
            ),
            // systemd driver, the main process in a child (a container running systemd).
            (
                format!("0::/system.slice/docker-{ID}.scope/init.scope\n"),
                Ok(format!("/system.slice/docker-{ID}.scope")),
            ),
            // A custom --cgroup-parent.
            (format!("0::/mpd123/{ID}\n"), Ok(format!("/mpd123/{ID}"))),
            // Nested: the deepest segment naming it.
            (
                format!("0::/docker/{ID}/docker/{ID}/x\n"),
                Ok(format!("/docker/{ID}/docker/{ID}")),
            ),
            // A container that moved its main process into a child named like another one
            // is still its own cgroup.
            (
                format!("0::/docker/{ID}/docker-{OTHER}.scope\n"),
                Ok(format!("/docker/{ID}")),
            ),
            // The pid is another container's (or a host process's) now.
            (format!("0::/docker/{OTHER}\n"), Err("NotTheContainer")),
            (
                "0::/system.slice/cron.service\n".to_owned(),
                Err("NotTheContainer"),
            ),
            // A prefix of the id, or the id inside a longer name, is not the id.
            (
                format!("0::/docker/{}\n", &ID[..63]),
                Err("NotTheContainer"),
            ),
            (format!("0::/docker/x{ID}\n"), Err("NotTheContainer")),
            // Outside the daemon's cgroup namespace.
            (format!("0::/../../docker/{ID}\n"), Err("OutsideNamespace")),
            // cgroup v1 only.
            (format!("4:memory:/docker/{ID}\n"), Err("NoV2")),
        ];
        for (text, want) in cases {
            let cgroups = ProcessCGroups::from_read(text.as_bytes()).expect("parses");
            let got = container_cgroup(&cgroups, 42, ID);
            match (want, &got) {
                (Ok(path), Ok(p)) => assert_eq!(p, path, "{text}"),
                (Err(kind), Err(e)) => assert!(format!("{e:?}").starts_with(kind), "{text}: {e:?}"),
                _ => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn read_from_proc_and_fails_closed_without_a_process() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("42")).unwrap();
        std::fs::write(proc.path().join("42/cgroup"), format!("0::/docker/{ID}\n")).unwrap();
        assert_eq!(
            of_main_process(proc.path(), Some(42), ID),
            Ok(format!("/docker/{ID}"))
        );
        assert_eq!(
            of_main_process(proc.path(), None, ID),
            Err(CgroupError::NoProcess)
        );
        assert!(matches!(
            of_main_process(proc.path(), Some(43), ID),
            Err(CgroupError::Read { .. })
        ));
        assert!(matches!(
            of_main_process(proc.path(), Some(42), ""),
            Err(CgroupError::NotTheContainer { .. })
        ));
        // A file that is not a cgroup list is refused with procfs's reason.
        std::fs::create_dir(proc.path().join("44")).unwrap();
        std::fs::write(proc.path().join("44/cgroup"), "docker\n").unwrap();
        assert!(matches!(
            of_main_process(proc.path(), Some(44), ID),
            Err(CgroupError::Read { .. })
        ));
    }
}
