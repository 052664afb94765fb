//! `cargo xtask setup`: the Debian packages the tests and the demo use (dockerd, containerd, a
//! static busybox for the images, …) and the Python virtualenv holding the test peers (moto,
//! botocore, the aws CLI).

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

/// A Debian package that `setup` installs when it is missing.
#[derive(Debug)]
struct Package {
    /// Debian's name for it.
    name: &'static str,
    /// What needs it (printed when it is installed).
    needed_by: &'static str,
    /// How to tell it is there.
    present: Present,
}

/// How to tell that a [`Package`] is there.
#[derive(Debug)]
enum Present {
    /// dpkg has it installed and this file exists.
    File(&'static str),
    /// This Python code runs under `python3`, however that Python was installed (pyenv's has
    /// `venv` and `ensurepip` built in; Debian's `python3` needs `python3-venv` for them).
    Python(&'static str),
}

/// The Debian packages the tests and the demo need, and nothing for the build: the daemon builds
/// with cargo alone (its gRPC bindings are generated without `protoc`). README's "Development"
/// lists the same names (checked by a test).
const PACKAGES: &[Package] = &[
    Package {
        name: "python3-venv",
        needed_by: "python3 -m venv, for .venv",
        present: Present::Python("import venv, ensurepip"),
    },
    Package {
        name: "docker.io",
        needed_by: "the Docker tests and the demo: a private dockerd",
        present: Present::File("/usr/sbin/dockerd"),
    },
    Package {
        name: "containerd",
        needed_by: "the containerd tests: a private containerd",
        present: Present::File("/usr/bin/containerd"),
    },
    Package {
        name: "runc",
        needed_by: "running containerd's containers",
        present: Present::File("/usr/sbin/runc"),
    },
    Package {
        name: "busybox-static",
        needed_by: "the test containers' root filesystem",
        present: Present::File("/bin/busybox"),
    },
    Package {
        name: "iproute2",
        needed_by: "test network namespaces and 169.254.169.254 on lo",
        present: Present::File("/sbin/ip"),
    },
    Package {
        name: "systemd",
        needed_by: "systemd-analyze verify of deploy/systemd/metadataproxy.service",
        present: Present::File("/usr/bin/systemd-analyze"),
    },
];

impl Package {
    /// Whether it is there (installed, or not needed as with `python3-venv` beside pyenv).
    fn is_present(&self) -> bool {
        match self.present {
            Present::File(file) => installed(self.name) && Path::new(file).exists(),
            Present::Python(code) => Command::new("python3")
                .args(["-c", code])
                .output()
                .is_ok_and(|o| o.status.success()),
        }
    }
}

/// Installs the missing [`PACKAGES`] with apt (as root), saying which and what for; elsewhere
/// says what is missing.
fn system_packages() -> Result<()> {
    step("setup: system packages for the tests and the demo");
    let missing: Vec<&Package> = PACKAGES.iter().filter(|p| !p.is_present()).collect();
    if missing.is_empty() {
        println!(
            "nothing to install, all there: {}",
            PACKAGES
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Ok(());
    }
    for package in &missing {
        println!("missing: {} (for {})", package.name, package.needed_by);
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        println!(
            "not root or no apt-get: install {} by hand; the tests that need them fail without them",
            names.join(" ")
        );
        return Ok(());
    }
    println!("installing with apt-get: {}", names.join(" "));
    process::run(Command::new("apt-get").args(["update", "-q"]))?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {}", names.join(" ")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// README's "Development" names exactly the packages `setup` installs, in the same order.
    #[test]
    fn readme_lists_the_packages_setup_installs() {
        let readme = std::fs::read_to_string(repo::root().join("README.md")).expect("README.md");
        let (_, rest) = readme
            .split_once("<!-- packages:begin -->")
            .expect("README.md has no <!-- packages:begin --> marker");
        let (listed, _) = rest
            .split_once("<!-- packages:end -->")
            .expect("README.md has no <!-- packages:end --> marker");
        let listed: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
        assert_eq!(
            listed, names,
            "README.md's package list and setup.rs differ"
        );
    }
}
