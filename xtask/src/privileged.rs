//! `cargo xtask test-privileged` (root): the eBPF object, the daemon, then the privileged tests with
//! one test thread; and `cargo xtask bench-redirect`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{ebpf, process, repo, setup, step};

const PACKAGE: &str = "metadataproxy-privileged-tests";

/// The privileged tests' one binary (`tests/privileged/tests/privileged/`, a module per area; the
/// benchmark is its own), passed as `--test NAME`: a name without its flag would silently become
/// a filter that matches nothing.
const TEST: &str = "privileged";

fn require_root() -> Result<()> {
    if metadataproxy_tests::effective_uid() != "0" {
        bail!(
            "the privileged tests load eBPF programs and create cgroups and namespaces: run as root"
        );
    }
    Ok(())
}

/// Builds everything and runs `tests/privileged` (or one benchmark) with the environment it needs.
pub fn run(extra: &[String], bench: bool) -> Result<()> {
    require_root()?;
    let venv = setup::run()?;
    ebpf::run()?;
    repo::build_daemon()?;
    let bin = repo::daemon_bin()?;
    let moto = venv.join("bin").join("moto_server");
    step(if bench {
        "bench: redirect + identification vs direct loopback"
    } else {
        "test: privileged tests, one thread"
    });
    let mut cmd = Command::new(repo::cargo());
    cmd.args(["test", "-p", PACKAGE]);
    if bench {
        cmd.args([
            "--release",
            "--test",
            "bench",
            "--",
            "--ignored",
            "--nocapture",
        ]);
    } else {
        cmd.args(["--test", TEST, "--", "--ignored", "--test-threads=1"]);
    }
    process::run(
        cmd.args(extra)
            .env("MOTO_SERVER", &moto)
            .env("METADATAPROXY_BIN", &bin)
            .current_dir(repo::root()),
    )
}
