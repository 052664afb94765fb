//! What runs inside each demo container: busybox `wget` at 169.254.169.254 (IMDSv1, or IMDSv2 with a
//! token from a `PUT` over `nc`), and its findings read back from `docker logs`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use metadataproxy_tests::{DockerD, IMAGE};

/// The credentials route at the metadata address, as every AWS SDK calls it.
pub const URL: &str = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";

/// The container's main process (`$1` = `v2` for IMDSv2): lists its role, fetches its credentials,
/// prints one line per answer, then sleeps so `docker exec` can join it.
const SCRIPT: &str = r#"set -f
U=http://169.254.169.254/latest/meta-data/iam/security-credentials/
T=
if [ "$1" = v2 ]; then
  T=$( (printf 'PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\nX-aws-ec2-metadata-token-ttl-seconds: 300\r\n\r\n'; sleep 1) | nc 169.254.169.254 80 | sed '1,/^\r$/d')
  echo "token:${#T}"
fi
get() { if [ -n "$T" ]; then wget -q -O - --header "X-aws-ec2-metadata-token: $T" "$1"; else wget -q -O - "$1"; fi; }
R=$(get "$U" 2>&1); S=$?
echo "list:$S:$R" | tr '\n' ' '; echo
if [ $S = 0 ]; then C=$(get "$U$R" 2>&1); S=$?; echo "creds:$S:$C" | tr '\n' ' '; echo; fi
echo end
exec sleep 600
"#;

/// What a container's own process got from 169.254.169.254.
#[derive(Debug, Default)]
pub struct Findings {
    /// IMDSv2 only: the length of the token it was issued.
    pub token_len: Option<usize>,
    /// `wget` succeeded listing the role.
    pub listed: bool,
    /// The role name listed, or wget's error (e.g. `… 404 Not Found`).
    pub listing: String,
    /// The credentials document, when the listing succeeded.
    pub creds: Option<String>,
}

/// `docker run -d --name <name> <args…> IMAGE sh -c SCRIPT`; returns the container id.
pub fn start(docker: &DockerD, name: &str, args: &[&str], v2: bool) -> String {
    let mut all = vec!["run", "-d", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, "sh", "-c", SCRIPT, "demo"]);
    all.push(if v2 { "v2" } else { "v1" });
    docker.must(&all)
}

/// Waits for the container's script to finish its requests and parses what it printed.
pub fn findings(docker: &DockerD, id: &str) -> Result<Findings> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = docker.cli(&["logs", id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.lines().any(|l| l.trim() == "end") {
            break text;
        }
        if Instant::now() > deadline {
            bail!("container {id} did not finish its requests in 30 s; its output:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut found = Findings::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(len) = line.strip_prefix("token:") {
            found.token_len = len.parse().ok();
        } else if let Some(rest) = line.strip_prefix("list:") {
            let (status, body) = rest.split_once(':').unwrap_or((rest, ""));
            found.listed = status == "0";
            body.trim().clone_into(&mut found.listing);
        } else if let Some(rest) = line.strip_prefix("creds:") {
            let (status, body) = rest.split_once(':').unwrap_or((rest, ""));
            if status != "0" {
                bail!("container {id}: fetching its credentials failed: {body}");
            }
            found.creds = Some(body.trim().to_owned());
        }
    }
    Ok(found)
}
