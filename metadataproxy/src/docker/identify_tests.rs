//! Unit tests of the Docker identification sources through the real identification chain.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::*;
use crate::docker::container::ContainerInfo;
use crate::identity::Chain;
use crate::role::{RoleAssignment, RoleSpec};

fn info(id: &str, ip: &str, hostname: &str, domain: &str, env: &[&str]) -> ContainerInfo {
    ContainerInfo {
        id: id.repeat(64 / id.len()),
        name: format!("c-{id}"),
        running: true,
        hostname: hostname.into(),
        domainname: domain.into(),
        env: env.iter().map(|e| (*e).to_owned()).collect(),
        labels: HashMap::new(),
        ips: ip.parse().into_iter().collect(),
        ..ContainerInfo::default()
    }
}

fn index(containers: &[ContainerInfo]) -> Arc<ContainerIndex> {
    let index = ContainerIndex::new();
    for c in containers {
        index.upsert(Container::new(c, None));
    }
    index
}

fn conn(ip: &str) -> ConnInfo {
    ConnInfo {
        peer: SocketAddr::new(ip.parse().unwrap(), 40000),
        local: "172.17.0.1:45001".parse().unwrap(),
        kernel: None,
    }
}

fn fallback() -> RoleAssignment {
    RoleAssignment::from_role(RoleSpec::parse("fallback").unwrap())
}

/// `role/session@source`, or `none`.
async fn who(chain: &Chain, ip: &str) -> String {
    match chain.identify(&conn(ip)).await.assignment {
        Some((a, source)) => format!(
            "{}/{}@{}",
            a.role,
            a.session_name.as_ref().map_or("-", |s| s.as_str()),
            source.as_str()
        ),
        None => "none".into(),
    }
}

#[test]
fn match_key_table() {
    let cases = [
        // Lyft's default pattern has no group: the whole name is compared.
        ("^.*$", "web.example.test", Some("web.example.test")),
        ("^.*$", "Web.Example.Test.", Some("web.example.test")),
        (r"^([^.]+)\..*$", "web-1.prod.example", Some("web-1")),
        (r"^([^.]+)\..*$", "nodomain", None),
        (r"^ip-(\d+)", "ip-10.ec2", Some("10")),
        (r"^(a)?b$", "b", None),
        ("^web", "api.example", None),
    ];
    for (pattern, name, want) in cases {
        let regex = Regex::new(pattern).unwrap();
        assert_eq!(
            match_key(&regex, name).as_deref(),
            want,
            "{pattern} on {name}"
        );
    }
}

#[tokio::test]
async fn docker_ip_gives_each_container_its_own_role() {
    let index = index(&[
        info("a", "172.17.0.2", "a", "", &["IAM_ROLE=role-a"]),
        info("b", "172.17.0.3", "b", "", &["IAM_ROLE=role-b"]),
        info("c", "172.17.0.4", "c", "", &[]),
        info("d", "172.17.0.5", "d", "", &["IAM_ROLE"]),
    ]);
    let chain = Chain::new(vec![Box::new(DockerIp::new(index))], Some(fallback()));
    assert_eq!(who(&chain, "172.17.0.2").await, "role-a/-@docker_ip");
    assert_eq!(who(&chain, "::ffff:172.17.0.3").await, "role-b/-@docker_ip");
    assert_eq!(who(&chain, "172.17.0.4").await, "fallback/-@docker_ip");
    assert_eq!(
        who(&chain, "172.17.0.5").await,
        "none",
        "malformed: refused, not default"
    );
    assert_eq!(who(&chain, "10.9.9.9").await, "fallback/-@default_role");
}

#[tokio::test]
async fn container_without_role_and_no_default_gets_nothing() {
    let index = index(&[info("c", "172.17.0.4", "c", "", &[])]);
    let chain = Chain::new(vec![Box::new(DockerIp::new(index))], None);
    assert_eq!(who(&chain, "172.17.0.4").await, "none");
}

#[tokio::test]
async fn default_role_takes_the_containers_session_name() {
    let index = ContainerIndex::new();
    let session = crate::config::SessionKey::Env("WHO".into());
    index.upsert(Container::new(
        &info("c", "172.17.0.4", "c", "", &["WHO=alice"]),
        Some(&session),
    ));
    let chain = Chain::new(vec![Box::new(DockerIp::new(index))], Some(fallback()));
    assert_eq!(who(&chain, "172.17.0.4").await, "fallback/alice@docker_ip");
}

/// Answers from a fixed table.
#[derive(Debug)]
struct FakeDns(HashMap<IpAddr, String>);

impl ReverseLookup for FakeDns {
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Option<String>> {
        Box::pin(std::future::ready(self.0.get(&ip).cloned()))
    }
}

fn reverse(index: &Arc<ContainerIndex>, pattern: &str) -> ReverseDns {
    let dns = FakeDns(HashMap::from([
        ("10.0.0.5".parse().unwrap(), "web.prod.example.".to_owned()),
        ("10.0.0.6".parse().unwrap(), "api.prod.example".to_owned()),
        ("10.0.0.7".parse().unwrap(), "dup.prod.example".to_owned()),
    ]));
    ReverseDns::new(
        Arc::clone(index),
        Box::new(dns),
        Regex::new(pattern).unwrap(),
    )
}

#[tokio::test]
async fn reverse_dns_matches_with_the_default_pattern() {
    let index = index(&[
        info(
            "w",
            "172.17.0.2",
            "web",
            "prod.example",
            &["IAM_ROLE=role-web"],
        ),
        info("a", "172.17.0.3", "api", "", &["IAM_ROLE=role-api"]),
    ]);
    let chain = Chain::new(
        vec![
            Box::new(DockerIp::new(Arc::clone(&index))),
            Box::new(reverse(&index, "^.*$")),
        ],
        None,
    );
    assert_eq!(who(&chain, "10.0.0.5").await, "role-web/-@reverse_dns");
    // `api` (no domain) is not `api.prod.example` under the whole-name rule.
    assert_eq!(who(&chain, "10.0.0.6").await, "none");
    assert_eq!(who(&chain, "10.0.0.9").await, "none", "no PTR record");
    assert_eq!(who(&chain, "172.17.0.3").await, "role-api/-@docker_ip");
}

#[tokio::test]
async fn reverse_dns_compares_group_one_and_refuses_ambiguity() {
    let index = index(&[
        info("a", "172.17.0.3", "api", "", &["IAM_ROLE=role-api"]),
        info(
            "d",
            "172.17.0.4",
            "dup",
            "one.example",
            &["IAM_ROLE=role-d1"],
        ),
        info(
            "e",
            "172.17.0.5",
            "dup",
            "two.example",
            &["IAM_ROLE=role-d2"],
        ),
    ]);
    let chain = Chain::new(vec![Box::new(reverse(&index, r"^([^.]+)"))], None);
    assert_eq!(who(&chain, "10.0.0.6").await, "role-api/-@reverse_dns");
    assert_eq!(
        who(&chain, "10.0.0.7").await,
        "none",
        "two containers named dup"
    );
}

#[tokio::test]
async fn a_caller_faster_than_its_start_event_is_waited_for() {
    let index = ContainerIndex::new();
    index.set_live(true);
    let chain = Chain::new(vec![Box::new(DockerIp::new(Arc::clone(&index)))], None);
    let late = Arc::clone(&index);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        late.upsert(Container::new(
            &info("a", "172.17.0.2", "a", "", &["IAM_ROLE=role-a"]),
            None,
        ));
    });
    assert_eq!(who(&chain, "172.17.0.2").await, "role-a/-@docker_ip");
}

#[tokio::test]
async fn unknown_callers_wait_at_most_the_grace_and_not_at_all_without_docker() {
    let index = ContainerIndex::new();
    let chain = Chain::new(vec![Box::new(DockerIp::new(Arc::clone(&index)))], None);
    let started = std::time::Instant::now();
    assert_eq!(who(&chain, "172.17.0.9").await, "none");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(100),
        "Docker not followed: no wait"
    );
    index.set_live(true);
    let started = std::time::Instant::now();
    assert_eq!(who(&chain, "172.17.0.9").await, "none");
    let waited = started.elapsed();
    assert!(
        waited >= START_GRACE && waited < START_GRACE * 3,
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn loopback_callers_do_not_wait() {
    let index = ContainerIndex::new();
    index.set_live(true);
    let chain = Chain::new(vec![Box::new(DockerIp::new(index))], Some(fallback()));
    let started = std::time::Instant::now();
    assert_eq!(who(&chain, "127.0.0.1").await, "fallback/-@default_role");
    assert!(
        started.elapsed() < START_GRACE / 2,
        "{:?}",
        started.elapsed()
    );
}

/// A cgroup tree in a temporary folder: `(root, inode of docker/<id>, inode of a service)`.
fn cgroup_tree(id: &str) -> (std::path::PathBuf, u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::env::temp_dir().join(format!("mp-cgroups-{}-{id}", std::process::id()));
    let container = root.join("docker").join(id);
    let service = root.join("system.slice").join("cron.service");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::create_dir_all(&service).unwrap();
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let (c, s) = (ino(&container), ino(&service));
    (root, c, s)
}

fn kernel_conn(cgroup_id: u64) -> ConnInfo {
    ConnInfo {
        kernel: Some(crate::ebpf::Caller {
            cgroup_id,
            pid: 4242,
            netns_cookie: 1,
        }),
        ..conn("172.17.0.1")
    }
}

#[tokio::test]
async fn the_kernel_cgroup_names_the_container_even_on_the_host_network() {
    let id = "c".repeat(64);
    let (root, container_ino, service_ino) = cgroup_tree(&id);
    let index = index(&[info("c", "", "c", "", &["IAM_ROLE=role-host-net"])]);
    let paths = Arc::new(crate::identity::cgroup::CgroupPaths::new(root.clone()));
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), paths)),
            Box::new(DockerIp::new(index)),
        ],
        Some(fallback()),
    );
    let caller = chain.identify(&kernel_conn(container_ino)).await;
    // The audit log names the container the caller was found in.
    assert_eq!(
        caller.workload,
        Some(crate::identity::Workload {
            id: id.clone(),
            name: "c-c".into()
        })
    );
    let (role, source) = caller.assignment.unwrap();
    assert_eq!(
        (role.role.name(), source),
        ("role-host-net", Source::DockerCgroup)
    );
    // A host service: not a container; the chain goes on (here to DEFAULT_ROLE).
    let caller = chain.identify(&kernel_conn(service_ino)).await;
    assert_eq!(caller.workload, None);
    assert_eq!(caller.assignment.unwrap().1, Source::DefaultRole);
    let _ = std::fs::remove_dir_all(root);
}
