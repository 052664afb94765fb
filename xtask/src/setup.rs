//! `cargo xtask setup`: the Python virtualenv holding the test peers (moto, botocore, the aws CLI),
//! and the Debian packages of the real-Docker tests (dockerd, a static busybox for the image).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{process, repo, step};

/// Name of the file inside the venv that records which requirements it was built from.
const STAMP: &str = ".xtask-requirements-hash";

/// Makes sure `.venv` exists and holds exactly `tests/requirements.txt`; quick when it already does.
pub fn run() -> Result<PathBuf> {
    system_packages()?;
    step("setup: Python virtualenv with the test peers");
    let venv = repo::venv();
    let requirements = repo::root().join("tests").join("requirements.txt");
    let wanted = requirements_hash(&requirements)?;
    let python = venv.join("bin").join("python");
    let stamp = venv.join(STAMP);
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!(
            "{} is up to date with {}",
            venv.display(),
            requirements.display()
        );
        return Ok(venv);
    }
    if !python.exists() {
        println!("creating {}", venv.display());
        process::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
            "python3 -m venv failed (on Debian without pyenv: apt-get install python3-venv)",
        )?;
    }
    println!(
        "installing {} into {}",
        requirements.display(),
        venv.display()
    );
    process::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}

/// FNV-1a of the requirements file: stable across Rust versions, enough to notice an edit.
fn requirements_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}

/// Debian packages the integration tests need (Docker and containerd tests, deploy-file checks;
/// and the build: protoc for containerd's gRPC bindings), and how to tell each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("protobuf-compiler", "/usr/bin/protoc"),
    ("docker.io", "/usr/sbin/dockerd"),
    ("containerd", "/usr/bin/containerd"),
    ("runc", "/usr/sbin/runc"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "/sbin/ip"),
    // `systemd-analyze verify` checks deploy/systemd/metadataproxy.service.
    ("systemd", "/usr/bin/systemd-analyze"),
];

/// Installs the missing [`PACKAGES`] with apt (as root); elsewhere says what is missing.
fn system_packages() -> Result<()> {
    step("setup: system packages for the Docker tests");
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(name, file)| !installed(name) || !Path::new(file).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        println!(
            "installed: {}",
            PACKAGES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Ok(());
    }
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        println!(
            "missing: {} (not root or no apt-get: install them by hand; the Docker tests fail without them)",
            missing.join(" ")
        );
        return Ok(());
    }
    process::run(Command::new("apt-get").args(["update", "-q"]))?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing the Docker test packages")
}

/// Whether dpkg has `package` installed (busybox-static and busybox share `/bin/busybox`).
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    metadataproxy_tests::effective_uid() == "0"
}
