//! `--baseline PATH`: an earlier build of our daemon, checked before the run, then run with every
//! setting the bench gives ours that it knows (the ones it does not know are left out and named).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::path_var;

/// The earlier build measured beside ours.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Absolute path of the binary.
    pub path: PathBuf,
    /// What its `--version` printed.
    pub version: String,
    /// Settings our daemon reads that it does not (from both `--help` texts).
    unknown: BTreeSet<String>,
}

/// Checks `--baseline PATH` before anything is built: it must be an executable regular file, and
/// not `ours` (the binary the run rebuilds). Returns its absolute path.
pub fn validate(path: &Path, ours: &Path) -> Result<PathBuf> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--baseline {shown}: no such file (give the path of a metadataproxy binary)")
        }
        Err(e) => bail!("--baseline {shown}: cannot read it: {e}"),
    };
    if meta.is_dir() {
        bail!("--baseline {shown}: is a directory, not a metadataproxy binary");
    }
    if !meta.is_file() {
        bail!("--baseline {shown}: not a regular file");
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        bail!(
            "--baseline {shown}: not executable (mode {:o}); `chmod +x` it",
            mode & 0o7777
        );
    }
    let absolute = path
        .canonicalize()
        .with_context(|| format!("--baseline {shown}: resolving its path"))?;
    if ours.canonicalize().is_ok_and(|o| o == absolute) {
        bail!(
            "--baseline {shown}: is {}, the daemon this run rebuilds and measures as ours; \
             copy the build you want to compare against elsewhere and pass the copy",
            ours.display()
        );
    }
    Ok(absolute)
}

/// Runs `--help` and `--version` of the baseline at `path` (already validated) and of `ours`, to
/// learn which of our settings the baseline does not know.
pub fn probe(path: PathBuf, ours: &Path) -> Result<Baseline> {
    let theirs = settings(&output(&path, "--help")?);
    if theirs.is_empty() {
        bail!(
            "--baseline {}: its --help names no settings (`[env: NAME]`): not a metadataproxy binary?",
            path.display()
        );
    }
    let ours_settings = settings(&output(ours, "--help")?);
    let version = output(&path, "--version")?.trim().to_owned();
    Ok(Baseline {
        unknown: ours_settings.difference(&theirs).cloned().collect(),
        path,
        version,
    })
}

/// What `bin arg` printed on stdout (a clean environment: nothing of this shell shows in `--help`).
fn output(bin: &Path, arg: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg(arg)
        .env_clear()
        .env("PATH", path_var())
        .output()
        .with_context(|| format!("{}: cannot run it", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {arg}` failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The settings a `--help` text names (clap's `[env: NAME]`, or `[env: NAME=value]` when set).
fn settings(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

impl Baseline {
    /// The variables of `cmd`'s environment that are settings of ours the baseline does not know.
    pub fn left_out(&self, cmd: &Command) -> Vec<String> {
        cmd.get_envs()
            .filter(|(_, value)| value.is_some())
            .filter_map(|(key, _)| key.to_str())
            .filter(|key| self.unknown.contains(*key))
            .map(str::to_owned)
            .collect()
    }

    /// Removes [`Self::left_out`] from `cmd`'s environment; the names removed.
    pub fn restrict(&self, cmd: &mut Command) -> Vec<String> {
        let names = self.left_out(cmd);
        for name in &names {
            cmd.env_remove(name);
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn baseline(unknown: &[&str]) -> Baseline {
        Baseline {
            path: PathBuf::from("/old"),
            version: "metadataproxy 0.1.0".to_owned(),
            unknown: unknown.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn settings_are_read_from_clap_help() {
        let help = "      --host <VALUE>\n          IP address [env: HOST] [default: 0.0.0.0]\n\
                    \x20     --ebpf-target <VALUE>\n          target [env: EBPF_TARGET=1.2.3.4:5]\n\
                    \x20 -h, --help\n          Print help\n";
        let got: Vec<String> = settings(help).into_iter().collect();
        assert_eq!(got, ["EBPF_TARGET", "HOST"]);
        assert!(settings("Usage: something else\n").is_empty());
    }

    #[test]
    fn only_settings_it_does_not_know_are_left_out() {
        let old = baseline(&["EBPF_DIRECT_CALLERS", "EBPF_TARGET"]);
        let mut cmd = Command::new("/old");
        cmd.env("EBPF", "required")
            .env("EBPF_DIRECT_CALLERS", "127.0.0.1")
            .env("AWS_REGION", "us-east-1");
        assert_eq!(old.restrict(&mut cmd), ["EBPF_DIRECT_CALLERS"]);
        let left: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["AWS_REGION", "EBPF"]);
        assert!(old.left_out(&cmd).is_empty());
    }

    #[test]
    fn a_baseline_that_is_not_an_executable_file_is_refused_precisely() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = dir.path().join("ours");
        let missing = dir.path().join("missing");
        let err = validate(&missing, &ours).expect_err("missing").to_string();
        assert!(err.contains("no such file"), "{err}");

        let err = validate(dir.path(), &ours)
            .expect_err("directory")
            .to_string();
        assert!(err.contains("is a directory"), "{err}");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = validate(&plain, &ours)
            .expect_err("not executable")
            .to_string();
        assert!(err.contains("not executable (mode 644)"), "{err}");

        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let ok = validate(&plain, &ours).expect("an executable file");
        assert!(ok.is_absolute(), "{}", ok.display());

        let err = validate(&plain, &plain).expect_err("ours").to_string();
        assert!(err.contains("the daemon this run rebuilds"), "{err}");
    }
}
