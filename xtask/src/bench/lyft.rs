//! Lyft's metadataproxy 2.2.0: its own virtualenv (the Python 3.11 pins from TOOLCHAIN.md), run under
//! gunicorn with 2 gevent workers as its README says, talking only to moto on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::moto::ACCOUNT;
use super::path_var;
use crate::process;

/// Installed without dependencies: its own pins do not build on Python 3.11.
const LYFT: &str = "metadataproxy==2.2.0";
/// Exact pins that work on Python 3.11 (TOOLCHAIN.md), also installed without dependencies.
const PINNED: &[&str] = &[
    "Flask==1.1.4",
    "Werkzeug==1.0.1",
    "Jinja2==2.11.3",
    "MarkupSafe==2.0.1",
    "itsdangerous==1.1.0",
    "click==7.1.2",
    "docker-py==1.10.6",
    "requests==2.22.0",
    "urllib3==1.25.11",
    "cachetools==3.1.1",
    "python-json-logger==0.1.11",
    "blinker==1.4",
    "PyYAML==6.0.1",
    "gunicorn==19.9.0",
];
/// Unpinned in TOOLCHAIN.md, plus what the pins above need at import time (requests 2.22 and
/// docker-py 1.10.6 bounds); installed with their dependencies.
const UNPINNED: &[&str] = &[
    "boto3",
    "botocore",
    "gevent",
    "greenlet",
    "chardet>=3.0.2,<3.1",
    "idna>=2.5,<2.9",
    "certifi",
    "six",
    "websocket-client",
    "docker-pycreds",
];
/// Written after a complete install.
const STAMP: &str = ".xtask-lyft-2.2.0-v2";

/// Makes `dir` a virtualenv holding Lyft's metadataproxy and gunicorn; quick when it already does.
pub fn ensure_venv(dir: &Path) -> Result<PathBuf> {
    let pip = dir.join("bin").join("pip");
    if dir.join(STAMP).exists() {
        println!("{} already holds {LYFT}", dir.display());
        return Ok(dir.to_path_buf());
    }
    if !pip.exists() {
        process::run(Command::new("python3").arg("-m").arg("venv").arg(dir))
            .context("python3 -m venv (on Debian: apt-get install python3-venv)")?;
    }
    let quiet = ["install", "--quiet", "--disable-pip-version-check"];
    process::run(
        Command::new(&pip)
            .args(quiet)
            .arg("--no-deps")
            .arg(LYFT)
            .args(PINNED),
    )?;
    process::run(Command::new(&pip).args(quiet).args(UNPINNED))?;
    std::fs::write(dir.join(STAMP), "")?;
    Ok(dir.to_path_buf())
}

/// `gunicorn metadataproxy:app --workers=2 -k gevent` on `addr`, with an environment that can only
/// reach moto: endpoint overrides, dummy keys, no instance metadata, no config files, and no
/// `AWS_REGION` (Lyft reads that itself and then builds a real `sts.<region>.amazonaws.com` URL,
/// ignoring the override); botocore still needs a region to sign, from `AWS_DEFAULT_REGION`.
pub fn command(venv: &Path, addr: SocketAddr, moto: &str, mapping: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin").join("gunicorn"));
    cmd.args(["metadataproxy:app", "--workers=2", "-k", "gevent", "--bind"])
        .arg(addr.to_string())
        .env_clear()
        .env("PATH", path_var())
        .env("AWS_ENDPOINT_URL_STS", moto)
        .env("AWS_ENDPOINT_URL_IAM", moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("DEFAULT_ACCOUNT_ID", ACCOUNT)
        .env("DEBUG", "false")
        .env("MOCK_API", "true")
        // Never used with a mapping file and MOCK_API; if it were, it would stay on this machine.
        .env("METADATA_URL", "http://127.0.0.1:9")
        .env("DOCKER_URL", "unix:///nonexistent/docker.sock")
        .env("ROLE_MAPPING_FILE", mapping);
    cmd
}
