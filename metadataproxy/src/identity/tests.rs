//! The chain: sources asked in order, the first that knows the caller wins (a refusal included),
//! `DEFAULT_ROLE` last (with a container's session name when it gives one); the caller's identity
//! fixed at accept; which callers may be identified at all; the metric labels of the sources.

use std::net::SocketAddr;

use super::*;
use crate::caller::KernelRecord;
use crate::role::RoleSpec;

fn role(name: &str) -> Arc<RoleAssignment> {
    Arc::new(RoleAssignment::from_role(RoleSpec::parse(name).unwrap()))
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn local() -> SocketAddr {
    peer("127.0.0.1:45001")
}

fn record(cgroup_id: u64) -> KernelRecord {
    KernelRecord {
        cgroup_id,
        pid: 7,
        netns_cookie: 1,
    }
}

/// A source answering `answer` (as `source`) for callers from `only`, or for everyone.
#[derive(Debug)]
struct Knows {
    only: Option<SocketAddr>,
    found: Found,
}

impl Identify for Knows {
    fn identify<'a>(&'a self, conn: &'a ConnInfo) -> Lookup<'a> {
        let known = self.only.is_none_or(|p| p == conn.peer);
        Lookup::Ready(known.then(|| self.found.clone()))
    }
}

fn knows(only: Option<&str>, answer: Answer, source: Source) -> Box<dyn Identify> {
    Box::new(Knows {
        only: only.map(peer),
        found: Found::new(answer, source),
    })
}

fn names(caller: &Caller) -> Option<(String, Source)> {
    caller
        .assignment
        .as_ref()
        .map(|(a, s)| (a.role.to_string(), *s))
}

#[tokio::test]
async fn the_first_source_that_knows_the_caller_wins_and_default_role_comes_last() {
    let chain = Chain::new(
        vec![
            knows(
                Some("10.0.0.1:1"),
                Answer::Role(role("first")),
                Source::DockerCgroup,
            ),
            knows(
                Some("10.0.0.2:1"),
                Answer::Refused,
                Source::ContainerdCgroup,
            ),
            knows(None, Answer::Role(role("second")), Source::MappingFile),
            knows(None, Answer::Role(role("never")), Source::DockerIp),
        ],
        Some(RoleAssignment::from_role(
            RoleSpec::parse("fallback").unwrap(),
        )),
    );
    let conn = |p: &str| ConnInfo::new(peer(p), local(), None);
    // Known by the first source: its answer, whatever later ones say.
    let first = chain.identify(&conn("10.0.0.1:1")).await;
    assert_eq!(names(&first), Some(("first".into(), Source::DockerCgroup)));
    // A refusal ends the chain: no later source, no DEFAULT_ROLE.
    let refused = chain.identify(&conn("10.0.0.2:1")).await;
    assert_eq!(names(&refused), None);
    // Anyone else: the first source that knows them.
    let other = chain.identify(&conn("10.0.0.3:1")).await;
    assert_eq!(names(&other), Some(("second".into(), Source::MappingFile)));
    assert_eq!(other.identity, Identity::Ip("10.0.0.3".parse().unwrap()));

    // No source knows the caller: DEFAULT_ROLE, said to come from it.
    let lonely = Chain::new(
        vec![knows(Some("10.0.0.1:1"), Answer::Refused, Source::DockerIp)],
        Some(RoleAssignment::from_role(
            RoleSpec::parse("fallback").unwrap(),
        )),
    );
    let found = lonely
        .identify(&ConnInfo::new(peer("10.0.0.9:1"), local(), None))
        .await;
    assert_eq!(
        names(&found),
        Some(("fallback".into(), Source::DefaultRole))
    );
    // Without DEFAULT_ROLE: nothing.
    let none = Chain::new(Vec::new(), None)
        .identify(&ConnInfo::new(peer("10.0.0.9:1"), local(), None))
        .await;
    assert!(none.assignment.is_none());
}

#[tokio::test]
async fn a_container_without_a_role_gets_default_role_under_its_own_session_name() {
    let session = crate::role::SessionName::sanitize("web-1").unwrap();
    let chain = Chain::new(
        vec![knows(
            None,
            Answer::DefaultRole(crate::role::Session::named(Some(session.clone()))),
            Source::DockerCgroup,
        )],
        Some(RoleAssignment::from_role(
            RoleSpec::parse("fallback").unwrap(),
        )),
    );
    let caller = chain
        .identify(&ConnInfo::new(peer("10.0.0.1:1"), local(), None))
        .await;
    let (assignment, source) = caller.assignment.expect("DEFAULT_ROLE");
    assert_eq!(assignment.role.to_string(), "fallback");
    assert_eq!(assignment.session_name, Some(session));
    assert_eq!(
        source,
        Source::DockerCgroup,
        "the container's source is named"
    );
    // Without DEFAULT_ROLE such a container gets nothing.
    let bare = Chain::new(
        vec![knows(
            None,
            Answer::DefaultRole(crate::role::Session::default()),
            Source::DockerCgroup,
        )],
        None,
    );
    let caller = bare
        .identify(&ConnInfo::new(peer("10.0.0.1:1"), local(), None))
        .await;
    assert!(caller.assignment.is_none());
}

#[tokio::test]
async fn a_caller_that_skipped_the_redirect_is_identified_only_from_the_networks_named() {
    let nets: Arc<[ipnet::IpNet]> = vec!["192.168.0.0/16".parse().unwrap()].into();
    let chain = Chain::new(
        vec![knows(None, Answer::Role(role("web")), Source::MappingFile)],
        Some(RoleAssignment::from_role(
            RoleSpec::parse("fallback").unwrap(),
        )),
    )
    .with_address_identity(AddressIdentity::Only(nets));
    // No record and not in EBPF_DIRECT_CALLERS: nothing, not even DEFAULT_ROLE.
    let straight = ConnInfo::new(peer("10.0.0.1:1"), local(), None);
    assert!(!chain.may_identify(&straight));
    assert!(chain.identify(&straight).await.assignment.is_none());
    // Named (an IPv4-mapped spelling too), or with a kernel record: identified.
    for conn in [
        ConnInfo::new(peer("192.168.1.1:1"), local(), None),
        ConnInfo::new(peer("[::ffff:192.168.1.1]:1"), local(), None),
        ConnInfo::new(peer("10.0.0.1:1"), local(), Some(record(42))),
    ] {
        assert!(chain.may_identify(&conn), "{conn:?}");
        assert!(chain.identify(&conn).await.assignment.is_some(), "{conn:?}");
    }
    // IP-only mode: everyone.
    assert!(AddressIdentity::Everyone.allows(&straight));
}

#[test]
fn the_callers_identity_is_its_recorded_cgroup_else_its_address() {
    let recorded = ConnInfo::new(peer("10.0.0.1:1"), local(), Some(record(42)));
    assert_eq!(recorded.identity(), &Identity::Cgroup(42));
    let by_address = ConnInfo::new(peer("10.0.0.1:1"), local(), None);
    assert_eq!(
        by_address.identity(),
        &Identity::Ip("10.0.0.1".parse().unwrap())
    );
    let loopback = ConnInfo::new(peer("127.9.9.9:1"), local(), None);
    assert_eq!(loopback.identity(), &Identity::Loopback);
}

#[test]
fn each_source_is_counted_under_its_own_name() {
    let m = crate::metrics::Metrics::new();
    m.identified(Some(Source::DockerCgroup));
    m.identified(Some(Source::MappingFile));
    m.identified(Some(Source::MappingFile));
    m.identified(Some(Source::ReverseDns));
    m.identified(None::<Source>);
    let text = m.encode();
    for want in [
        r#"metadataproxy_identifications_total{source="docker_cgroup"} 1"#,
        r#"metadataproxy_identifications_total{source="mapping_file"} 2"#,
        r#"metadataproxy_identifications_total{source="reverse_dns"} 1"#,
        r#"metadataproxy_identifications_total{source="none"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == want), "{want} in:\n{text}");
    }
}
