//! Unit tests of the Docker identification sources through the real identification chain.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::*;
use crate::containers::ContainerInfo;
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
    ConnInfo::new(
        SocketAddr::new(ip.parse().unwrap(), 40000),
        "172.17.0.1:45001".parse().unwrap(),
        None,
    )
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
    let session = crate::role::SessionKey::Env("WHO".into());
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

/// A cgroup tree in a temporary folder holding `dirs`; removed on drop.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new(dirs: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d.trim_start_matches('/'))).unwrap();
        }
        Self(root)
    }

    fn ino(&self, dir: &str) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(self.0.path().join(dir.trim_start_matches('/')))
            .unwrap()
            .ino()
    }

    fn paths(&self) -> Arc<crate::cgroup::CgroupPaths> {
        Arc::new(crate::cgroup::CgroupPaths::new(self.0.path().to_owned()))
    }
}

/// A container as Docker reports it, with the cgroup read from its main process.
fn in_cgroup(id: &str, cgroup: Option<&str>, env: &[&str]) -> ContainerInfo {
    ContainerInfo {
        cgroup: cgroup.map(str::to_owned),
        ..info(id, "", id, "", env)
    }
}

fn kernel_conn(cgroup_id: u64) -> ConnInfo {
    let c = conn("172.17.0.1");
    let kernel = Some(crate::caller::KernelRecord {
        cgroup_id,
        pid: 4242,
        netns_cookie: 1,
    });
    ConnInfo::new(c.peer, c.local, kernel)
}

#[tokio::test]
async fn the_kernel_cgroup_names_the_container_even_on_the_host_network() {
    let id = "c".repeat(64);
    let tree = Tree::new(&[&format!("docker/{id}"), "system.slice/cron.service"]);
    let index = index(&[in_cgroup(
        "c",
        Some(&format!("/docker/{id}")),
        &["IAM_ROLE=role-host-net"],
    )]);
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), tree.paths())),
            Box::new(DockerIp::new(index)),
        ],
        Some(fallback()),
    );
    let caller = chain
        .identify(&kernel_conn(tree.ino(&format!("docker/{id}"))))
        .await;
    // The audit log names the container the caller was found in.
    let workload = caller.workload.as_deref().unwrap();
    assert_eq!((&*workload.id, &*workload.name), (id.as_str(), "c-c"));
    let (role, source) = caller.assignment.unwrap();
    assert_eq!(
        (role.role.name(), source),
        ("role-host-net", Source::DockerCgroup)
    );
    // A host service: not a container; the chain goes on (here to DEFAULT_ROLE).
    let caller = chain
        .identify(&kernel_conn(tree.ino("system.slice/cron.service")))
        .await;
    assert_eq!(caller.workload, None);
    assert_eq!(caller.assignment.unwrap().1, Source::DefaultRole);
}

/// `role@source`, `refused@source` (a source knew the caller and gave nothing), or `none`
/// for a caller in the cgroup at `dir` of `tree`.
async fn who_in(chain: &Chain, tree: &Tree, dir: &str) -> String {
    let caller = chain.identify(&kernel_conn(tree.ino(dir))).await;
    match caller.assignment {
        Some((a, source)) => format!("{}@{}", a.role.name(), source.as_str()),
        None => "none".into(),
    }
}

#[tokio::test]
async fn a_cgroup_named_like_a_container_elsewhere_is_refused_not_defaulted() {
    let (a, b, u) = ("a".repeat(64), "b".repeat(64), "e".repeat(64));
    let unknown = "f".repeat(64);
    let tree = Tree::new(&[
        &format!("/docker/{a}/init.scope"),
        &format!("/docker/{a}/docker-{b}.scope"),
        &format!("/docker/{b}"),
        &format!("/docker/{u}"),
        &format!("/user.slice/user-1000.slice/x/docker-{a}.scope"),
        &format!("/user.slice/user-1000.slice/y/{a}"),
        &format!("/docker/{a}x/{b}"),
        &format!("/user.slice/user-1000.slice/docker-{u}.scope"),
        &format!("/user.slice/user-1000.slice/docker-{unknown}.scope"),
        "/user.slice/user-1000.slice/session-1.scope",
    ]);
    let index = index(&[
        in_cgroup("a", Some(&format!("/docker/{a}")), &["IAM_ROLE=role-a"]),
        in_cgroup("b", Some(&format!("/docker/{b}")), &["IAM_ROLE=role-b"]),
        // Its cgroup could not be verified when it was indexed.
        in_cgroup("e", None, &["IAM_ROLE=role-e"]),
    ]);
    index.set_live(true);
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), tree.paths())),
            Box::new(DockerIp::new(index)),
        ],
        Some(fallback()),
    );
    let table: &[(String, &str)] = &[
        // The container's cgroup and below it.
        (format!("/docker/{a}"), "role-a@docker_cgroup"),
        (format!("/docker/{a}/init.scope"), "role-a@docker_cgroup"),
        // Inside a, named like b: still a (never b).
        (
            format!("/docker/{a}/docker-{b}.scope"),
            "role-a@docker_cgroup",
        ),
        (format!("/docker/{b}"), "role-b@docker_cgroup"),
        // Look-alikes: refused, not DEFAULT_ROLE.
        (
            format!("/user.slice/user-1000.slice/x/docker-{a}.scope"),
            "none",
        ),
        (format!("/user.slice/user-1000.slice/y/{a}"), "none"),
        // A string prefix of a's cgroup is not below it; it names b elsewhere.
        (format!("/docker/{a}x/{b}"), "none"),
        // A container whose own cgroup is unverified is identified by cgroup by nobody.
        (format!("/docker/{u}"), "none"),
        (
            format!("/user.slice/user-1000.slice/docker-{u}.scope"),
            "none",
        ),
        // Naming no indexed container: the chain goes on.
        (
            format!("/user.slice/user-1000.slice/docker-{unknown}.scope"),
            "fallback@default_role",
        ),
        (
            "/user.slice/user-1000.slice/session-1.scope".to_owned(),
            "fallback@default_role",
        ),
    ];
    for (dir, want) in table {
        assert_eq!(who_in(&chain, &tree, dir).await, *want, "{dir}");
    }
}

#[tokio::test]
async fn a_look_alike_gets_no_container_for_the_ecs_token_check() {
    let a = "a".repeat(64);
    let tree = Tree::new(&[
        &format!("/docker/{a}"),
        &format!("/user.slice/docker-{a}.scope"),
    ]);
    let index = index(&[in_cgroup("a", Some(&format!("/docker/{a}")), &[])]);
    let callers = CallerContainer {
        by_cgroup: Some(DockerCgroup::new(Arc::clone(&index), tree.paths())),
        by_ip: Some(DockerIp::new(index)),
    };
    let own = kernel_conn(tree.ino(&format!("/docker/{a}")));
    assert_eq!(
        callers.find(&own).await.map(|c| c.id.clone()),
        Some(a.clone())
    );
    let look_alike = kernel_conn(tree.ino(&format!("/user.slice/docker-{a}.scope")));
    assert!(callers.find(&look_alike).await.is_none());
}

#[tokio::test]
async fn a_connections_cgroup_is_looked_up_once_for_every_source_and_request() {
    let tree = Tree::new(&["/system.slice/cron.service"]);
    let index = index(&[]);
    // Two sources with resolvers of their own: only the connection's memo can save a walk.
    let (p1, p2) = (tree.paths(), tree.paths());
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), Arc::clone(&p1))),
            Box::new(DockerCgroup::new(index, Arc::clone(&p2))),
        ],
        Some(fallback()),
    );
    let conn = kernel_conn(tree.ino("/system.slice/cron.service"));
    for _ in 0..3 {
        assert_eq!(
            chain.identify(&conn).await.assignment.unwrap().1,
            Source::DefaultRole
        );
    }
    assert_eq!(p1.walks() + p2.walks(), 1);
}

#[tokio::test]
async fn a_container_cgroup_is_refused_while_docker_is_not_followed() {
    let (a, unknown) = ("a".repeat(64), "f".repeat(64));
    let tree = Tree::new(&[
        &format!("/docker/{a}"),
        &format!("/system.slice/docker-{unknown}.scope"),
        "/system.slice/cron.service",
    ]);
    let index = index(&[in_cgroup(
        "a",
        Some(&format!("/docker/{a}")),
        &["IAM_ROLE=role-a"],
    )]);
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), tree.paths())),
            Box::new(DockerIp::new(Arc::clone(&index))),
        ],
        Some(fallback()),
    );
    let unknown_dir = format!("/system.slice/docker-{unknown}.scope");
    // Docker unreachable (or not synchronised yet): a container the index has not seen might have
    // any role; after the grace for a synchronisation under way, it gets none, not DEFAULT_ROLE.
    let started = std::time::Instant::now();
    assert_eq!(who_in(&chain, &tree, &unknown_dir).await, "none");
    assert!(started.elapsed() >= START_GRACE, "{:?}", started.elapsed());
    // What the index still holds is served, and a host service is no container.
    assert_eq!(
        who_in(&chain, &tree, &format!("/docker/{a}")).await,
        "role-a@docker_cgroup"
    );
    assert_eq!(
        who_in(&chain, &tree, "/system.slice/cron.service").await,
        "fallback@default_role"
    );
    // The first synchronisation completing within the grace: the caller waits for it, and is
    // then found in its container.
    let b = "b".repeat(64);
    std::fs::create_dir_all(tree.0.path().join(format!("docker/{b}"))).unwrap();
    let later = Arc::clone(&index);
    let cgroup_b = format!("/docker/{b}");
    let synced = tokio::spawn(async move {
        tokio::time::sleep(START_GRACE / 5).await;
        later.upsert(Container::new(
            &in_cgroup("b", Some(&cgroup_b), &["IAM_ROLE=role-b"]),
            None,
        ));
        later.set_live(true);
    });
    assert_eq!(
        who_in(&chain, &tree, &format!("/docker/{b}")).await,
        "role-b@docker_cgroup"
    );
    synced.await.unwrap();
    // Followed: the name alone proves nothing, and the chain goes on after the grace.
    assert_eq!(
        who_in(&chain, &tree, &unknown_dir).await,
        "fallback@default_role"
    );
}

/// The second request on a connection takes the shortcut (its cgroup path already looked up):
/// it must find what the first found, and nothing once the container is gone.
#[tokio::test]
async fn a_connections_later_requests_find_the_same_container_and_not_a_removed_one() {
    let id = "d".repeat(64);
    let tree = Tree::new(&[&format!("docker/{id}")]);
    let index = index(&[in_cgroup(
        "d",
        Some(&format!("/docker/{id}")),
        &["IAM_ROLE=role-d"],
    )]);
    let source = DockerCgroup::new(Arc::clone(&index), tree.paths());
    let conn = kernel_conn(tree.ino(&format!("docker/{id}")));
    assert!(
        matches!(source.identify(&conn), Lookup::Later(_)),
        "the first request looks the cgroup path up"
    );
    let first = source.identify(&conn).get().await.map(|f| f.source);
    assert_eq!(first, Some(Source::DockerCgroup));
    let again = source.identify(&conn);
    assert!(matches!(again, Lookup::Ready(Some(_))), "{again:?}");
    let workload = again.get().await.and_then(|f| f.workload);
    assert_eq!(workload.map(|w| w.id.clone()), Some(id.clone()));
    index.remove(&id);
    let gone = source.identify(&conn);
    assert!(!matches!(gone, Lookup::Ready(Some(_))), "{gone:?}");
    // Its cgroup still names a Docker container: refused (fail closed), never its old role.
    let gone = gone.get().await;
    assert!(
        gone.as_ref()
            .is_none_or(|f| matches!(f.answer, Answer::Refused) && f.workload.is_none()),
        "a removed container was found: {gone:?}"
    );
}

#[tokio::test]
async fn a_container_docker_cannot_describe_is_refused_not_defaulted() {
    let (a, blind) = ("a".repeat(64), "9".repeat(64));
    let blind_dir = format!("/system.slice/docker-{blind}.scope");
    let tree = Tree::new(&[&format!("/docker/{a}"), &blind_dir]);
    let index = index(&[in_cgroup(
        "a",
        Some(&format!("/docker/{a}")),
        &["IAM_ROLE=role-a"],
    )]);
    index.set_live(true);
    let chain = Chain::new(
        vec![
            Box::new(DockerCgroup::new(Arc::clone(&index), tree.paths())),
            Box::new(DockerIp::new(Arc::clone(&index))),
        ],
        Some(fallback()),
    );
    // Docker runs it but cannot describe it: its role is unknown, so it gets none, at once
    // (nothing is on its way to wait for); not DEFAULT_ROLE.
    index.set_unreadable([blind.clone()]);
    let started = std::time::Instant::now();
    assert_eq!(who_in(&chain, &tree, &blind_dir).await, "none");
    assert!(started.elapsed() < START_GRACE, "{:?}", started.elapsed());
    assert_eq!(
        who_in(&chain, &tree, &format!("/docker/{a}")).await,
        "role-a@docker_cgroup"
    );
    // Described (or gone) since: the chain goes on as for any cgroup merely named like one.
    index.set_unreadable([]);
    assert_eq!(
        who_in(&chain, &tree, &blind_dir).await,
        "fallback@default_role"
    );
}
