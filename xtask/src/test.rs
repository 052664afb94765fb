//! `cargo xtask test`: set up the peers, build the daemon, run the whole suite against them.

use std::process::Command;

use anyhow::Result;

use crate::{ebpf, process, repo, setup, step};

/// Runs `cargo test --workspace` with the environment the integration tests need.
pub fn run(extra: &[String]) -> Result<()> {
    let venv = setup::run()?;
    // The Docker + eBPF tests run the daemon with its redirect: embed the object.
    ebpf::run()?;
    repo::build_daemon()?;
    let bin = repo::daemon_bin()?;
    let moto = venv.join("bin").join("moto_server");
    step("test: cargo test --workspace --no-fail-fast");
    println!("MOTO_SERVER={}", moto.display());
    println!("METADATAPROXY_VENV={}", venv.display());
    println!("METADATAPROXY_BIN={}", bin.display());
    process::run(
        Command::new(repo::cargo())
            // Every failing test binary is reported, not only the first.
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra)
            .env("MOTO_SERVER", &moto)
            .env("METADATAPROXY_VENV", &venv)
            .env("METADATAPROXY_BIN", &bin)
            .current_dir(repo::root()),
    )
}
