//! The fallback demo (no root, BTF or cgroup v2): a mapping file gives 127.0.0.1 a role and the aws
//! CLI on this host gets its credentials from the daemon in IP-only mode, all on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::{http, masked, path_var};
use crate::process::{self, Guard};
use crate::step;

/// The role the demo creates in moto and maps to 127.0.0.1.
const ROLE: &str = "demo-role";
/// moto's default account.
const ACCOUNT: &str = "123456789012";
/// Trust policy that lets anyone assume the role (moto does not enforce it, IAM requires one).
const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;

/// Runs the demo; every process it starts is stopped when this returns, on success or failure.
pub fn run(venv: &Path, daemon_bin: &Path) -> Result<()> {
    let venv = venv.to_path_buf();
    let work = tempfile::Builder::new()
        .prefix("metadataproxy-demo-")
        .tempdir()?;

    step("[fallback] 1/5 start moto_server on loopback (stands in for AWS STS and IAM)");
    let moto_port = process::free_port()?;
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    let mut moto = spawn_logged(
        "moto_server",
        Command::new(venv.join("bin").join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .env_clear()
            .env("PATH", path_var()),
        &work.path().join("moto.log"),
    )?;
    moto.wait_listening(loopback(moto_port), Duration::from_secs(30))?;
    println!("moto is listening at {moto_url}");

    step(&format!("[fallback] 2/5 create IAM role {ROLE} in moto"));
    let out = aws_cli(&venv, &moto_url)
        .args(["iam", "create-role", "--role-name", ROLE])
        .args(["--assume-role-policy-document", TRUST_POLICY])
        .args(["--query", "Role.Arn", "--output", "text"])
        .output()
        .context("running aws iam create-role")?;
    ensure!(
        out.status.success(),
        "aws iam create-role failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("created {}", String::from_utf8_lossy(&out.stdout).trim());

    step("[fallback] 3/5 start metadataproxy (mapping file: 127.0.0.1 -> demo-role, mock API)");
    let mapping = work.path().join("role-mapping.json");
    std::fs::write(&mapping, format!(r#"{{"127.0.0.1": "{ROLE}"}}"#))?;
    println!(
        "{}: {}",
        mapping.display(),
        std::fs::read_to_string(&mapping)?
    );
    let port = process::free_port()?;
    let mut daemon = spawn_logged(
        "metadataproxy",
        &mut daemon_command(daemon_bin, port, &moto_url, &mapping)?,
        &work.path().join("metadataproxy.log"),
    )?;
    daemon.wait_listening(loopback(port), Duration::from_secs(10))?;
    println!("metadataproxy is listening at http://127.0.0.1:{port}/");

    let result = exercise(&venv, port, &moto_url);
    if result.is_err() {
        println!("\n--- metadataproxy log ---\n{}", daemon.log_text());
    }
    step("stop: metadataproxy and moto_server");
    drop(daemon);
    drop(moto);
    result?;
    println!(
        "\ndemo OK (fallback, mapping file, no eBPF): the aws CLI ran as assumed-role/{ROLE}, with credentials from metadataproxy"
    );
    Ok(())
}

/// Steps 4 and 5: what the daemon serves, then the CLI using it as its metadata service.
fn exercise(venv: &Path, port: u16, moto_url: &str) -> Result<()> {
    step("[fallback] 4/5 what metadataproxy serves to 127.0.0.1 (IMDSv1 GETs)");
    let daemon = loopback(port);
    let list = http::get(daemon, "/latest/meta-data/iam/security-credentials/")?;
    println!(
        "GET /latest/meta-data/iam/security-credentials/ -> {} {:?}",
        list.status, list.body
    );
    ensure!(list.status == 200, "listing the role failed: {list:?}");
    let path = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let creds = http::get(daemon, &path)?;
    println!("GET {path} -> {}", creds.status);
    ensure!(
        creds.status == 200,
        "fetching credentials failed: {creds:?}"
    );
    println!("{}", masked(&creds.body)?);

    step(
        "[fallback] 5/5 aws sts get-caller-identity with no static credentials (IMDS -> metadataproxy)",
    );
    let mut cli = Command::new(venv.join("bin").join("aws"));
    cli.args(["sts", "get-caller-identity", "--output", "json"])
        .env_clear()
        .env("PATH", path_var())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{port}/"),
        )
        .env("AWS_ENDPOINT_URL_STS", moto_url)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stdin(Stdio::null());
    println!("$ {}", process::describe(&cli));
    let out = cli
        .output()
        .context("running aws sts get-caller-identity")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "aws sts get-caller-identity failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let identity: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing get-caller-identity output")?;
    let arn = identity["Arn"].as_str().unwrap_or_default();
    if !arn.contains(&format!("assumed-role/{ROLE}")) {
        bail!("caller identity is {arn:?}, expected an assumed-role/{ROLE} session");
    }
    Ok(())
}

/// The daemon with exactly the variables the demo wants (nothing leaks in from this shell).
fn daemon_command(bin: &Path, port: u16, moto_url: &str, mapping: &Path) -> Result<Command> {
    // Never used in mock mode, but if it were, it must stay on this machine.
    let nowhere = format!("http://127.0.0.1:{}", process::free_port()?);
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", path_var())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("MOCK_API", "true")
        // IP-only mode: the demo identifies the aws CLI by its loopback address.
        .env("EBPF", "off")
        .env("METADATA_URL", nowhere)
        .env("DEFAULT_ACCOUNT_ID", ACCOUNT)
        .env("ROLE_MAPPING_FILE", mapping)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_STS", moto_url)
        .env("AWS_ENDPOINT_URL_IAM", moto_url)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    Ok(cmd)
}

/// The venv's aws CLI with moto's dummy static credentials (for setting moto up, not the demo).
fn aws_cli(venv: &Path, moto_url: &str) -> Command {
    let mut cmd = Command::new(venv.join("bin").join("aws"));
    cmd.args(["--endpoint-url", moto_url])
        .env_clear()
        .env("PATH", path_var())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::null());
    cmd
}

/// Starts `cmd` in the background with stdout and stderr going to `log`.
fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Guard> {
    let file = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Guard::spawn(name, cmd, log.to_path_buf())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
