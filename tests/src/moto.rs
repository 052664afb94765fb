//! `moto_server` as the real STS and IAM: one process per test on a free loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use tempfile::TempDir;

use crate::net::{free_port, loopback, wait_listening};
use crate::{SRC_1, get, path_var, required_path};

/// A trust policy that lets anyone assume the role (IAM requires one; moto does not enforce it).
const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;

/// A running `moto_server`, killed when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

/// One AssumeRole call as moto recorded it (`sts.AssumedRole` in `/moto-api/data.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    pub access_key_id: String,
}

impl Moto {
    /// Starts `$MOTO_SERVER -H 127.0.0.1 -p <free port>` and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(&required_path("MOTO_SERVER")).await
    }

    /// Starts this `moto_server` binary (for callers other than the test suite).
    ///
    /// A free port can be taken between our check and moto's bind (by another test's listener,
    /// or as a client's source port): then moto says "Address already in use" and a new port is
    /// tried, three times at most.
    pub async fn start_with(bin: &Path) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_start(bin).await {
                Ok(moto) => return moto,
                Err(log) if attempt < 3 && log.contains("Address already in use") => attempt += 1,
                Err(log) => panic!("{log}"),
            }
        }
    }

    /// One start on a free port; on failure, why, with moto's log.
    async fn try_start(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("moto-")
            .tempdir()
            .expect("temp dir for moto's log");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log file");
        let addr = loopback(free_port());
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .env_clear()
            .env("PATH", path_var())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        if let Err(why) = wait_listening(addr, Duration::from_secs(60), &mut child).await {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
            return Err(format!("moto_server {why}; its log:\n{log}"));
        }
        Ok(Self {
            child: Some(child),
            addr,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL_IAM`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills moto now (to test how the daemon copes with STS being down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything moto holds, from its `GET /moto-api/data.json`.
    pub async fn data(&self) -> serde_json::Value {
        let response = get(SRC_1, self.addr, "/moto-api/data.json", &[]).await;
        assert_eq!(response.status, 200, "moto data.json: {response:?}");
        response.json()
    }

    /// Every AssumeRole call moto has answered, oldest first.
    pub async fn assumed_roles(&self) -> Vec<AssumedRole> {
        let data = self.data().await;
        let Some(records) = data["sts"]["AssumedRole"].as_array() else {
            panic!("moto data.json has no sts.AssumedRole list: {data}");
        };
        records
            .iter()
            .map(|r| {
                let text = |key: &str| {
                    r[key]
                        .as_str()
                        .unwrap_or_else(|| panic!("AssumedRole record without {key}: {r}"))
                        .to_owned()
                };
                AssumedRole {
                    role_arn: text("role_arn"),
                    session_name: text("session_name"),
                    external_id: r["external_id"].as_str().map(str::to_owned),
                    access_key_id: text("access_key_id"),
                }
            })
            .collect()
    }

    /// How many AssumeRole calls moto has answered so far.
    pub async fn assume_role_count(&self) -> usize {
        self.assumed_roles().await.len()
    }

    /// An IAM client with moto's dummy credentials.
    pub fn iam(&self) -> aws_sdk_iam::Client {
        let config = aws_sdk_iam::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_iam::Client::from_conf(config)
    }

    /// An STS client signing with the given credentials.
    pub fn sts(&self, access_key: &str, secret: &str, token: Option<&str>) -> aws_sdk_sts::Client {
        let credentials =
            Credentials::new(access_key, secret, token.map(str::to_owned), None, "tests");
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_sts::Client::from_conf(config)
    }

    /// Creates role `name` under `path` (e.g. `/` or `/team/`); returns its ARN.
    pub async fn create_role(&self, name: &str, path: &str) -> String {
        let out = self
            .iam()
            .create_role()
            .role_name(name)
            .path(path)
            .assume_role_policy_document(TRUST_POLICY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto CreateRole {path}{name}: {e:?}"));
        let Some(role) = out.role() else {
            panic!("CreateRole {name} returned no role");
        };
        role.arn().to_owned()
    }

    /// The ARN that STS `GetCallerIdentity` reports for these credentials. moto answers any access
    /// key; only keys it issued through AssumeRole come back as `assumed-role/<role>/<session>`.
    pub async fn caller_identity_arn(&self, access_key: &str, secret: &str, token: &str) -> String {
        let out = self
            .sts(access_key, secret, Some(token))
            .get_caller_identity()
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto GetCallerIdentity for {access_key}: {e:?}"));
        out.arn().unwrap_or_default().to_owned()
    }

    /// moto's own output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
