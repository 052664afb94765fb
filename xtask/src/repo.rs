//! Where things are: the repository root, the virtualenv and cargo's target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The project's Python virtualenv, made by `cargo xtask setup`.
pub fn venv() -> PathBuf {
    root().join(".venv")
}

/// Cargo's target directory, as cargo itself resolves it (honours `CARGO_TARGET_DIR` and config).
pub fn target_dir() -> Result<PathBuf> {
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The daemon binary built by `cargo build -p metadataproxy`.
pub fn daemon_bin() -> Result<PathBuf> {
    Ok(target_dir()?.join("debug").join("metadataproxy"))
}

/// `cargo build -p metadataproxy` (it embeds the eBPF object when `build-ebpf` has made one).
pub fn build_daemon() -> Result<()> {
    crate::step("build: cargo build -p metadataproxy");
    crate::process::run(
        std::process::Command::new(cargo())
            .args(["build", "-p", "metadataproxy"])
            .current_dir(root()),
    )
}

/// The cargo that runs this xtask (so `+toolchain` choices carry through).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
