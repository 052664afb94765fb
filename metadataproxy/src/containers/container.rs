//! One running container as the index keeps it, built from what Docker reports about it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::settings::{self, Authorization, ContainerRole};
use crate::identity::{ConnInfo, Found, Source, Workload};
use crate::role::{SessionKey, TagsConfig, WorkloadFacts};

/// Lyft's label for the address Rancher's managed network gives a container (`ip/prefix`).
pub const RANCHER_IP_LABEL: &str = "io.rancher.container.ip";

/// What a container source reports about one container (the subset of `docker inspect` used).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full 64-hex id.
    pub id: String,
    /// The name, without Docker's leading `/`.
    pub name: String,
    /// Its image, as the runtime reports it (Docker's `Config.Image`, containerd's image name).
    pub image: String,
    /// Whether it is running now.
    pub running: bool,
    /// `Config.Hostname`.
    pub hostname: String,
    /// `Config.Domainname`.
    pub domainname: String,
    /// `Config.Env`, `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `Config.Labels`.
    pub labels: HashMap<String, String>,
    /// Every address in `NetworkSettings.Networks[*]` (IPv4 and global IPv6).
    pub ips: Vec<IpAddr>,
    /// The cgroup v2 path its processes run in, when the source knows it (containerd: from the
    /// OCI spec; Docker: read from its main process and verified to name it). Identification by
    /// cgroup accepts a caller only in this cgroup or below it; without one, none.
    pub cgroup: Option<String>,
    /// The annotations of its Kubernetes pod (containerd's CRI containers; empty otherwise).
    pub pod_annotations: HashMap<String, String>,
    /// The labels of its Kubernetes pod (containerd's CRI containers; empty otherwise): what the
    /// role policy and session tags see as its labels, under the container's own.
    pub pod_labels: HashMap<String, String>,
    /// Its main process on this host (`State.Pid`), when the source reports it.
    pub pid: Option<u32>,
}

/// The environment and labels may hold secrets: `Debug` names only what is needed to debug.
impl fmt::Debug for ContainerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("running", &self.running)
            .field("hostname", &self.hostname)
            .field("domainname", &self.domainname)
            .field("env", &format_args!("[{} entries]", self.env.len()))
            .field("labels", &format_args!("[{} labels]", self.labels.len()))
            .field("ips", &self.ips)
            .field("cgroup", &self.cgroup)
            .field(
                "pod_annotations",
                &format_args!("[{} annotations]", self.pod_annotations.len()),
            )
            .field("pid", &self.pid)
            .field(
                "pod_labels",
                &format_args!("[{} labels]", self.pod_labels.len()),
            )
            .finish()
    }
}

/// A running container in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full 64-hex id.
    pub id: String,
    /// The name, without Docker's leading `/`.
    pub name: String,
    /// Its addresses: every network's, then the Rancher label's (canonical form, no duplicates).
    pub ips: Vec<IpAddr>,
    /// `Hostname.Domainname`, or just `Hostname` when the domain is empty (for reverse DNS).
    pub fqdn: String,
    /// What it is entitled to.
    pub role: ContainerRole,
    /// Its cgroup v2 path, when the source knows it ([`ContainerInfo::cgroup`]).
    pub cgroup: Option<String>,
    /// What its calls to `/v1/credentials` must present.
    pub authorization: Authorization,
    /// Its main process ([`ContainerInfo::pid`]): its token file is read through that root.
    pub pid: Option<u32>,
    /// What the audit log and the role policy know of it (shared by every request it makes).
    pub workload: Arc<Workload>,
}

impl Container {
    /// What the identification chain makes of this container, found by `source` for the caller
    /// on `conn`: its role settings' answer (malformed settings: refused, and logged), naming it.
    pub fn found(&self, source: Source, conn: &ConnInfo) -> Found {
        if let ContainerRole::Invalid(e) = &self.role {
            crate::refused!(WARN, conn.identity(), container = %self.name, id = short(&self.id), peer = %conn.peer, error = %e, "caller's container has malformed role settings: no credentials");
        }
        Found {
            answer: self.role.answer(),
            source,
            workload: Some(Arc::clone(&self.workload)),
        }
    }

    /// Builds the index entry of a container; `session_key` is `ROLE_SESSION_KEY`.
    pub fn new(info: &ContainerInfo, session_key: Option<&SessionKey>) -> Container {
        Self::with_tags(info, session_key, &TagsConfig::default())
    }

    /// [`Container::new`], its sessions tagged as `tags` says.
    pub fn with_tags(
        info: &ContainerInfo,
        session_key: Option<&SessionKey>,
        tags: &TagsConfig,
    ) -> Container {
        let mut ips: Vec<IpAddr> = Vec::with_capacity(info.ips.len() + 1);
        let rancher = info
            .labels
            .get(RANCHER_IP_LABEL)
            .and_then(|v| v.split('/').next())
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        for ip in info.ips.iter().copied().chain(rancher) {
            let ip = ip.to_canonical();
            if !ip.is_unspecified() && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let fqdn = if info.domainname.is_empty() {
            info.hostname.clone()
        } else {
            format!("{}.{}", info.hostname, info.domainname)
        };
        // A pod's labels, then the container's own (kubelet's `io.kubernetes.*` among them).
        let mut labels = info.pod_labels.clone();
        labels.extend(info.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let context = tags.context_for(&WorkloadFacts {
            name: &info.name,
            image: &info.image,
            labels: &labels,
            env: &info.env,
        });
        let role = settings::container_role_in_pod(
            &info.env,
            &info.labels,
            &info.pod_annotations,
            session_key,
        )
        .with_context(context);
        if settings::label_shadowed(&info.env, &info.labels) {
            tracing::warn!(
                container = %info.name,
                id = %short(&info.id),
                label = settings::ROLE_LABEL,
                "container names a role both by IAM_ROLE and by label; IAM_ROLE wins"
            );
        }
        Container {
            id: info.id.clone(),
            name: info.name.clone(),
            ips,
            fqdn,
            role,
            cgroup: info.cgroup.clone(),
            authorization: settings::authorization(&info.env),
            pid: info.pid,
            workload: Arc::new(Workload {
                id: info.id.clone(),
                name: info.name.clone(),
                image: info.image.clone(),
                labels,
            }),
        }
    }
}

/// The first 12 characters of an id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::Secret;

    fn info() -> ContainerInfo {
        ContainerInfo {
            id: "a".repeat(64),
            name: "web".into(),
            running: true,
            hostname: "web1".into(),
            domainname: String::new(),
            env: vec![
                "IAM_ROLE=web".into(),
                "AWS_SECRET_ACCESS_KEY=hunter2".into(),
            ],
            labels: HashMap::new(),
            ips: vec!["172.17.0.2".parse().unwrap()],
            ..ContainerInfo::default()
        }
    }

    #[test]
    fn addresses_from_networks_and_rancher_label() {
        let mut i = info();
        i.ips.push("::ffff:10.0.0.9".parse().unwrap());
        i.ips.push("172.17.0.2".parse().unwrap());
        i.ips.push("0.0.0.0".parse().unwrap());
        i.labels
            .insert(RANCHER_IP_LABEL.into(), "10.42.1.2/16".into());
        let c = Container::new(&i, None);
        let want: Vec<IpAddr> = ["172.17.0.2", "10.0.0.9", "10.42.1.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.ips, want);
    }

    #[test]
    fn bad_rancher_label_is_ignored() {
        let mut i = info();
        i.labels.insert(RANCHER_IP_LABEL.into(), "nonsense".into());
        assert_eq!(Container::new(&i, None).ips.len(), 1);
    }

    #[test]
    fn fqdn_is_hostname_dot_domain() {
        let mut i = info();
        assert_eq!(Container::new(&i, None).fqdn, "web1");
        i.domainname = "example.test".into();
        assert_eq!(Container::new(&i, None).fqdn, "web1.example.test");
    }

    #[test]
    fn debug_hides_environment_and_labels() {
        let text = format!("{:?}", info());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("[2 entries]"), "{text}");
    }

    #[test]
    fn authorization_token_is_kept_and_redacted() {
        let mut i = info();
        assert_eq!(Container::new(&i, None).authorization, Authorization::Unset);
        i.env
            .push("AWS_CONTAINER_AUTHORIZATION_TOKEN=s3cr3t-t0ken".into());
        let c = Container::new(&i, None);
        assert_eq!(
            c.authorization,
            Authorization::Token(Secret::new("s3cr3t-t0ken".into()))
        );
        let text = format!("{c:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        i.env.push("AWS_CONTAINER_AUTHORIZATION_TOKEN=".into());
        assert_eq!(Container::new(&i, None).authorization, Authorization::Unset);
    }

    #[test]
    fn authorization_token_file_wins_over_the_token_as_in_the_sdks() {
        let mut i = info();
        i.env.extend([
            "AWS_CONTAINER_AUTHORIZATION_TOKEN=s3cr3t-t0ken".into(),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/var/run/token".into(),
        ]);
        i.pid = Some(4242);
        let c = Container::new(&i, None);
        assert_eq!(
            c.authorization,
            Authorization::File("/var/run/token".into())
        );
        assert_eq!(c.pid, Some(4242));
        i.env.push("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=".into());
        assert_eq!(
            Container::new(&i, None).authorization,
            Authorization::Token(Secret::new("s3cr3t-t0ken".into()))
        );
    }

    #[test]
    fn short_id() {
        assert_eq!(short(&"0123456789abcdef".repeat(4)), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
