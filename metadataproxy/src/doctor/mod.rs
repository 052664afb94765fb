//! `metadataproxy doctor`: checks the configuration, the host (BTF, kernel version, cgroup v2,
//! bpffs, capabilities, the redirect target, the forwarding rules), Docker, the daemon's own AWS
//! credentials and STS; says what is wrong and how to fix it. Exits non-zero when a check the
//! configuration requires fails.

pub mod host;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigErrors, DOCKER_OFF, EbpfMode, Endpoint, Env, ProcessEnv};
use crate::creds::aws::AwsSts;
use crate::docker::DockerApi;
use host::{Need, System};

/// Where aws-config takes the STS endpoint from (named in messages).
const AWS_ENDPOINT_URL_STS: &str = "AWS_ENDPOINT_URL_STS";

/// How long the Docker and STS checks may take each.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but not as well as it could, or could not be checked.
    Warn,
    /// Something required is missing: the daemon will not work as configured.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the report can align verdicts with `{:<5}`.
        f.pad(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// How to fix it, for warnings and failures.
    pub fix: Option<String>,
}

impl Finding {
    /// A finding.
    pub fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A passed check.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Verdict::Ok, detail)
    }

    /// With how to fix it.
    #[must_use]
    pub fn fix(mut self, how: impl Into<String>) -> Self {
        self.fix = Some(how.into());
        self
    }
}

/// Every finding, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether a check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "{:<5} {:<16} {}",
                finding.verdict, finding.name, finding.detail
            )?;
            if let Some(fix) = &finding.fix {
                writeln!(f, "{:<23}fix: {fix}", "")?;
            }
        }
        let count = |v| self.findings.iter().filter(|f| f.verdict == v).count();
        let (fails, warns) = (count(Verdict::Fail), count(Verdict::Warn));
        if fails == 0 && warns == 0 {
            writeln!(f, "all checks passed")
        } else {
            writeln!(f, "{fails} failed, {warns} warnings")
        }
    }
}

/// Runs every check against this machine.
pub async fn run(config: Result<Config, ConfigErrors>) -> Report {
    check(config, &host::RealSystem, &ProcessEnv).await
}

/// Runs every check, reading host files through `sys` and the environment through `env`.
pub async fn check(
    config: Result<Config, ConfigErrors>,
    sys: &dyn System,
    env: &dyn Env,
) -> Report {
    let mut findings = Vec::new();
    let config = match config {
        Ok(c) => {
            findings.push(Finding::ok(
                "configuration",
                format!(
                    "valid (EBPF={}, DOCKER_URL={}, ADMIN_LISTEN={})",
                    mode_name(c.ebpf.mode),
                    c.docker
                        .as_ref()
                        .map_or_else(|| DOCKER_OFF.to_owned(), ToString::to_string),
                    c.admin_listen
                        .map_or_else(|| "off".to_owned(), |a| a.to_string())
                ),
            ));
            Some(c)
        }
        Err(e) => {
            findings.push(
                Finding::new("configuration", Verdict::Fail, e.to_string())
                    .fix("correct the settings named above (`metadataproxy --help` lists them)"),
            );
            None
        }
    };
    // Without a valid configuration, the host is checked as the default (`EBPF=required`) needs.
    let need = match config.as_ref().map(|c| c.ebpf.mode) {
        Some(EbpfMode::Off) => Need::NotNeeded,
        Some(EbpfMode::Auto) => Need::Wanted,
        Some(EbpfMode::Required) | None => Need::Required,
    };
    findings.push(host::btf(sys, need));
    findings.push(host::kernel(sys, need));
    let cgroups = config
        .as_ref()
        .map_or_else(|| vec!["/".to_owned()], |c| c.ebpf.cgroups.clone());
    findings.push(host::cgroup2(sys, need, &cgroups));
    let Some(config) = config else {
        findings.push(host::capabilities(sys, need));
        for name in ["bpffs", "docker", "aws credentials", "sts"] {
            findings.push(Finding::new(
                name,
                Verdict::Warn,
                "not checked: the configuration is invalid",
            ));
        }
        return Report { findings };
    };
    findings.extend(role_files(&config));
    findings.push(host::bpffs(sys, need, &config.ebpf.pin_dir));
    findings.push(host::capabilities(sys, need));
    findings.push(redirect_target(&config.ebpf, need).await);
    findings.push(forwarding_rules(config.ecs_endpoint, need).await);
    findings.push(docker(config.docker.as_ref()).await);
    let sts = AwsSts::load(
        config.aws_region.clone(),
        config.patch_ecs_allowed_hosts.as_deref(),
        Arc::new(SystemClock),
    )
    .await;
    findings.push(credentials(&sts).await);
    findings.push(sts_reachable(&sts, env).await);
    Report { findings }
}

/// `ROLE_MAPPING_FILE` and `ROLE_POLICY_FILE`, read and parsed as the daemon would at start
/// (it refuses to start with either broken).
pub fn role_files(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(path) = &config.role_mapping_file {
        findings.push(
            match crate::identity::mapping_file::MappingFile::load(path) {
                Ok(file) => Finding::ok(
                    "role mapping",
                    format!("{}: {} entries", path.display(), file.current().len()),
                ),
                Err(e) => Finding::new(
                    "role mapping",
                    Verdict::Fail,
                    crate::watched::ErrorChain(&e).to_string(),
                )
                .fix("correct the file (README: Role mapping file); the daemon will not start with it"),
            },
        );
    }
    if let Some(path) = &config.role_policy_file {
        findings.push(match crate::policy::PolicyFile::load(path) {
            Ok(file) => Finding::ok(
                "role policy",
                format!("{}: {} rules", path.display(), file.current().rules().len()),
            ),
            Err(e) => Finding::new(
                "role policy",
                Verdict::Fail,
                crate::watched::ErrorChain(&e).to_string(),
            )
            .fix("correct the file (README: Role policy); the daemon will not start with it"),
        });
    }
    findings
}

/// Where the redirect sends callers, and whether the default target's address is on `lo`.
async fn redirect_target(ebpf: &crate::config::EbpfConfig, need: Need) -> Finding {
    const NAME: &str = "redirect target";
    if need == Need::NotNeeded {
        return Finding::ok(NAME, "not used (EBPF=off)");
    }
    let targets = format!(
        "{} (IPv6 callers: {})",
        ebpf.target4,
        ebpf.target6
            .map_or_else(|| "refused, EBPF_TARGET6=off".to_owned(), |t| t.to_string())
    );
    let Some(addr) = ebpf.link_address else {
        return Finding::ok(
            NAME,
            format!(
                "{targets}; EBPF_TARGET is set: every caller must reach it, nothing is added to lo"
            ),
        );
    };
    match crate::ebpf::link_addr::present(addr).await {
        Ok(true) => Finding::ok(NAME, format!("{targets}; {addr} is on lo")),
        Ok(false) => Finding::ok(
            NAME,
            format!(
                "{targets}; {addr} is not on lo yet: the daemon adds it at start (CAP_NET_ADMIN)"
            ),
        ),
        Err(e) => Finding::new(
            NAME,
            Verdict::Warn,
            format!("{targets}; cannot list the addresses of lo: {e}"),
        ),
    }
}

/// The policy-routing rules refusing to forward packets to the metadata addresses.
async fn forwarding_rules(ecs: bool, need: Need) -> Finding {
    use crate::ebpf::forward_rules::{self, PREF_CONTINUE, PREF_LOCAL};
    const NAME: &str = "forwarding rules";
    if need == Need::NotNeeded {
        return Finding::ok(NAME, "not used (EBPF=off)");
    }
    let rules = forward_rules::wanted(ecs);
    match forward_rules::missing(&rules).await {
        Ok(missing) if missing.is_empty() => Finding::ok(
            NAME,
            format!(
                "in place (priorities {PREF_LOCAL}-{PREF_CONTINUE}): packets to the metadata addresses this host would forward are refused"
            ),
        ),
        Ok(missing) => {
            let mut addresses: Vec<String> = Vec::new();
            for rule in &missing {
                let addr = rule.to.to_string();
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
            Finding::ok(
                NAME,
                format!(
                    "{} of {} not in place yet (for {}; priorities {PREF_LOCAL}-{PREF_CONTINUE}): the daemon adds them at start (CAP_NET_ADMIN)",
                    missing.len(),
                    rules.len(),
                    addresses.join(", ")
                ),
            )
        }
        Err(e) => Finding::new(NAME, Verdict::Warn, e.to_string()),
    }
}

fn mode_name(mode: EbpfMode) -> &'static str {
    match mode {
        EbpfMode::Required => "required",
        EbpfMode::Auto => "auto",
        EbpfMode::Off => "off",
    }
}

/// dockerd answers at `DOCKER_URL`.
async fn docker(endpoint: Option<&Endpoint>) -> Finding {
    const NAME: &str = "docker";
    let Some(url) = endpoint else {
        return Finding::ok(NAME, "not used (DOCKER_URL=off)");
    };
    match tokio::time::timeout(NETWORK_TIMEOUT, DockerApi::new(url.clone()).version()).await {
        Ok(Ok((version, api))) => {
            Finding::ok(NAME, format!("Docker {version} (API {api}) at {url}"))
        }
        Ok(Err(e)) => Finding::new(NAME, Verdict::Fail, format!("Docker at {url}: {e}"))
            .fix("start dockerd, or set DOCKER_URL to where it listens (containers cannot be identified without it)"),
        Err(_) => Finding::new(
            NAME,
            Verdict::Fail,
            format!("Docker at {url} did not answer within {NETWORK_TIMEOUT:?}"),
        )
        .fix("check that dockerd is healthy"),
    }
}

/// The daemon has AWS credentials of its own.
async fn credentials(sts: &AwsSts) -> Finding {
    const NAME: &str = "aws credentials";
    match tokio::time::timeout(NETWORK_TIMEOUT, sts.own_key_hint()).await {
        Ok(Ok(hint)) => Finding::ok(NAME, format!("access key id …{hint}")),
        Ok(Err(e)) => Finding::new(NAME, Verdict::Fail, format!("none found: {e}"))
            .fix("give the daemon credentials (instance profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE…)"),
        Err(_) => Finding::new(
            NAME,
            Verdict::Fail,
            format!("the credential chain did not answer within {NETWORK_TIMEOUT:?}"),
        ),
    }
}

/// STS answers `sts:GetCallerIdentity` with those credentials.
async fn sts_reachable(sts: &AwsSts, env: &dyn Env) -> Finding {
    const NAME: &str = "sts";
    let endpoint = [AWS_ENDPOINT_URL_STS, "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| env.var(name).and_then(Result::ok))
        .unwrap_or_else(|| {
            format!(
                "the regional STS endpoint of {}",
                sts.region().unwrap_or_default()
            )
        });
    match tokio::time::timeout(NETWORK_TIMEOUT, sts.caller_identity()).await {
        Ok(Ok(arn)) => Finding::ok(NAME, format!("{endpoint} answers; the daemon is {arn}")),
        Ok(Err(e)) => Finding::new(NAME, Verdict::Fail, format!("{endpoint}: {e}")).fix(
            "check the network path to STS, AWS_REGION and AWS_ENDPOINT_URL_STS, and the daemon's credentials",
        ),
        Err(_) => Finding::new(
            NAME,
            Verdict::Fail,
            format!("{endpoint} did not answer within {NETWORK_TIMEOUT:?}"),
        )
        .fix("check the network path to STS"),
    }
}

#[cfg(test)]
mod tests;
