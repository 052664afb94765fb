//! `moto_server` as STS and IAM for every server under test: roles, and its record of AssumeRole calls.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::client::{Conn, once};
use super::path_var;
use super::proc::Proc;
use crate::process::free_port;

/// moto's default account, used as `DEFAULT_ACCOUNT_ID` everywhere.
pub const ACCOUNT: &str = "123456789012";
/// A trust policy anyone may assume (IAM wants one; moto does not enforce it).
const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
/// Parallel connections used to create roles.
const CREATE_WORKERS: usize = 4;
/// How many times a `CreateRole` that moto answered with a 5xx is sent again.
const CREATE_RETRIES: u32 = 3;

/// A running `moto_server` on loopback.
#[derive(Debug)]
pub struct Moto {
    proc: Proc,
    addr: SocketAddr,
}

impl Moto {
    /// Starts `<venv>/bin/moto_server` on a free loopback port and waits for it.
    pub fn start(venv: &Path, dir: &Path) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut proc = Proc::spawn(
            "moto_server",
            Command::new(venv.join("bin").join("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                .env_clear()
                .env("PATH", path_var()),
            &dir.join("moto.log"),
        )?;
        proc.wait_listening(addr, Duration::from_secs(60))?;
        Ok(Self { proc, addr })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates every role in `names` (path `/`).
    pub async fn create_roles(&self, names: &[String]) -> Result<()> {
        let chunks: Vec<Vec<String>> = names
            .chunks(names.len().div_ceil(CREATE_WORKERS).max(1))
            .map(<[String]>::to_vec)
            .collect();
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let addr = self.addr;
                tokio::spawn(async move {
                    let mut conn = Conn::open(None, addr).await?;
                    for name in chunk {
                        let body = format!(
                            "Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument={}",
                            form_encode(TRUST_POLICY)
                        );
                        // moto's threaded server now and then answers a concurrent call with a
                        // bare 500 (no error document): asked again, the role is made, or was.
                        let mut attempt = 0;
                        loop {
                            let resp =
                                conn.send("POST", "/", &IAM_HEADERS, body.as_bytes()).await?;
                            if conn.closed() {
                                conn = Conn::open(None, addr).await?;
                            }
                            let made_before = attempt > 0 && resp.status == 409;
                            if resp.status == 200 || made_before {
                                break;
                            }
                            ensure!(
                                resp.status >= 500 && attempt < CREATE_RETRIES,
                                "moto CreateRole {name}: {} {}",
                                resp.status,
                                resp.text()
                            );
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    /// How many AssumeRole calls moto has answered since it started.
    pub async fn assume_role_count(&self) -> Result<usize> {
        let resp = once(None, self.addr, "GET", "/moto-api/data.json", &[], b"").await?;
        ensure!(resp.status == 200, "moto data.json: {}", resp.status);
        let data: serde_json::Value =
            serde_json::from_slice(&resp.body).context("parsing moto's data.json")?;
        Ok(data["sts"]["AssumedRole"].as_array().map_or(0, Vec::len))
    }

    /// Every AssumeRole call moto has answered: (role ARN, external id, session name).
    pub async fn assumed_roles(&self) -> Result<Vec<(String, String, String)>> {
        let resp = once(None, self.addr, "GET", "/moto-api/data.json", &[], b"").await?;
        ensure!(resp.status == 200, "moto data.json: {}", resp.status);
        let data: serde_json::Value =
            serde_json::from_slice(&resp.body).context("parsing moto's data.json")?;
        let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
        Ok(data["sts"]["AssumedRole"]
            .as_array()
            .map(|records| {
                records
                    .iter()
                    .map(|r| {
                        (
                            text(r, "role_arn"),
                            text(r, "external_id"),
                            text(r, "session_name"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until moto has answered at least `count` AssumeRole calls in all.
    pub async fn wait_assume_roles(&self, count: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.assume_role_count().await?;
            if now >= count {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!("moto answered {now} AssumeRole calls within {timeout:?}, expected {count}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with moto's log if it has died.
    pub fn check_running(&mut self) -> Result<()> {
        self.proc.check_running()
    }
}

/// Headers that route a request to IAM inside moto (it reads the credential scope and does not
/// check signatures).
const IAM_HEADERS: [(&str, &str); 2] = [
    (
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
    ),
    ("Content-Type", "application/x-www-form-urlencoded"),
];

/// `application/x-www-form-urlencoded` for a value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
