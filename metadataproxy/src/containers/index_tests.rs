//! Unit tests of the container index: lookups, replacement, and address reuse.

use std::net::IpAddr;

use super::*;
use crate::containers::ContainerInfo;

pub(crate) fn container(id: &str, ip: &str, env: &[&str]) -> Container {
    Container::new(
        &ContainerInfo {
            id: id.repeat(64 / id.len()),
            name: format!("c-{id}"),
            running: true,
            hostname: format!("host-{id}"),
            env: env.iter().map(|e| (*e).to_owned()).collect(),
            ips: ip.parse().into_iter().collect(),
            ..ContainerInfo::default()
        },
        None,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn role_of(c: &Container) -> String {
    match &c.role {
        crate::containers::settings::ContainerRole::Role(a) => a.role.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn finds_by_id_and_ip() {
    let index = ContainerIndex::new();
    let change = index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    assert_eq!(change.added.len(), 1);
    assert!(change.removed.is_empty());
    let found = index.by_ip(ip("172.17.0.2")).unwrap();
    assert_eq!(role_of(&found), "ra");
    assert_eq!(index.by_id(&found.id).unwrap().name, "c-a");
    assert!(index.by_ip(ip("::ffff:172.17.0.2")).is_some());
    assert!(index.by_ip(ip("172.17.0.3")).is_none());
    assert!(index.by_id("nope").is_none());
}

#[test]
fn removed_container_is_never_served() {
    let index = ContainerIndex::new();
    let a = container("a", "172.17.0.2", &["IAM_ROLE=ra"]);
    let id = a.id.clone();
    index.upsert(a);
    let change = index.remove(&id);
    assert_eq!(change.removed.len(), 1);
    assert!(index.by_ip(ip("172.17.0.2")).is_none());
    assert!(index.by_id(&id).is_none());
    assert!(index.remove(&id).is_empty());
}

#[test]
fn ip_reuse_after_die_serves_the_new_container() {
    let index = ContainerIndex::new();
    let old = container("a", "172.17.0.2", &["IAM_ROLE=old-role"]);
    let old_id = old.id.clone();
    index.upsert(old);
    index.remove(&old_id);
    index.upsert(container("b", "172.17.0.2", &["IAM_ROLE=new-role"]));
    assert_eq!(role_of(&index.by_ip(ip("172.17.0.2")).unwrap()), "new-role");
}

#[test]
fn ip_claimed_twice_identifies_neither() {
    // A missed `die` (stream lost) must not hand the old container's role to the new one.
    let index = ContainerIndex::new();
    index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=old-role"]));
    let b = container("b", "172.17.0.2", &["IAM_ROLE=new-role"]);
    let b_id = b.id.clone();
    index.upsert(b);
    assert!(index.by_ip(ip("172.17.0.2")).is_none());
    assert!(index.by_id(&b_id).is_some(), "by id both are still known");
    // Once the stale one is gone (resync), the address identifies the new one.
    let change = index.replace_all(vec![container("b", "172.17.0.2", &["IAM_ROLE=new-role"])]);
    assert_eq!(change.removed.len(), 1, "{change:?}");
    assert!(
        change.added.is_empty(),
        "same role is not a change: {change:?}"
    );
    assert_eq!(role_of(&index.by_ip(ip("172.17.0.2")).unwrap()), "new-role");
}

#[test]
fn upsert_with_same_role_is_not_a_change_but_updates_addresses() {
    let index = ContainerIndex::new();
    index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    let change = index.upsert(container("a", "172.18.0.5", &["IAM_ROLE=ra"]));
    assert!(change.is_empty(), "{change:?}");
    assert!(index.by_ip(ip("172.17.0.2")).is_none());
    assert!(index.by_ip(ip("172.18.0.5")).is_some());
    assert_eq!(index.len(), 1);
}

#[test]
fn upsert_with_other_role_removes_and_adds() {
    let index = ContainerIndex::new();
    index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    let change = index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=rb"]));
    assert_eq!(role_of(&change.removed[0]), "ra");
    assert_eq!(role_of(&change.added[0]), "rb");
}

#[test]
fn replace_all_reports_gone_and_new() {
    let index = ContainerIndex::new();
    index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    index.upsert(container("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    let change = index.replace_all(vec![
        container("b", "172.17.0.3", &["IAM_ROLE=rb"]),
        container("c", "172.17.0.4", &["IAM_ROLE=rc"]),
    ]);
    let names = |v: &[Arc<Container>]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&change.removed), ["c-a"]);
    assert_eq!(names(&change.added), ["c-c"]);
    assert_eq!(index.len(), 2);
    assert!(index.by_ip(ip("172.17.0.2")).is_none());
}

#[test]
fn containers_without_address_are_indexed_by_id() {
    // `--network host` and `--network none`: no address of their own.
    let index = ContainerIndex::new();
    let c = container("h", "", &["IAM_ROLE=rh"]);
    let id = c.id.clone();
    index.upsert(c);
    assert!(index.by_id(&id).is_some());
    assert_eq!(index.matching(|c| c.ips.is_empty()).len(), 1);
}

#[tokio::test]
async fn by_id_soon_waits_for_a_container_being_indexed() {
    let index = ContainerIndex::new();
    index.set_live(true);
    let c = container("a", "172.17.0.2", &["IAM_ROLE=ra"]);
    let id = c.id.clone();
    let late = Arc::clone(&index);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        late.upsert(c);
    });
    assert_eq!(
        index.by_id_soon(&id).await.map(|c| role_of(&c)).as_deref(),
        Some("ra")
    );
    index.set_live(false);
    assert!(index.by_id_soon("unknown").await.is_none());
}

fn with_cgroup(id: &str, cgroup: &str) -> Container {
    Container {
        cgroup: Some(cgroup.to_owned()),
        ..container(id, "", &[])
    }
}

#[test]
fn finds_by_the_nearest_recorded_cgroup_and_forgets_it_on_removal() {
    let index = ContainerIndex::new();
    index.upsert(with_cgroup("a", "/docker/a"));
    index.upsert(with_cgroup("b", "/docker/a/nested"));
    let name = |p: &str| index.in_cgroup(p).map(|c| c.name.clone());
    assert_eq!(name("/docker/a").as_deref(), Some("c-a"));
    assert_eq!(name("/docker/a/init.scope").as_deref(), Some("c-a"));
    assert_eq!(
        name("/docker/a/nested/x").as_deref(),
        Some("c-b"),
        "nearest"
    );
    assert_eq!(name("/docker/ab"), None, "segment by segment");
    assert_eq!(name("/docker"), None);
    assert_eq!(name("/"), None);
    index.remove(&"b".repeat(64));
    assert_eq!(name("/docker/a/nested/x").as_deref(), Some("c-a"));
    index.replace_all(Vec::new());
    assert_eq!(name("/docker/a"), None);
}

#[test]
fn a_cgroup_claimed_by_two_containers_identifies_neither() {
    let index = ContainerIndex::new();
    index.upsert(with_cgroup("a", "/shared"));
    index.upsert(with_cgroup("b", "/shared"));
    assert!(index.in_cgroup("/shared/x").is_none());
    index.remove(&"a".repeat(64));
    assert_eq!(
        index
            .in_cgroup("/shared/x")
            .map(|c| c.name.clone())
            .as_deref(),
        Some("c-b")
    );
    // A replacement with another cgroup moves the entry.
    index.upsert(with_cgroup("b", "/moved"));
    assert!(index.in_cgroup("/shared").is_none());
    assert!(index.in_cgroup("/moved").is_some());
}

#[test]
fn differences_are_the_ids_on_one_side_only() {
    let index = ContainerIndex::new();
    index.upsert(container("a", "172.17.0.2", &[]));
    index.upsert(container("b", "172.17.0.3", &[]));
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    assert!(index.differences(vec![a.clone(), b.clone()]).is_empty());
    let differ = index.differences(vec![a, c.clone()]);
    assert_eq!(differ, [b, c].into_iter().collect());
    assert_eq!(index.differences(Vec::new()).len(), 2);
}

/// What a connection remembered of its caller stops holding at every change of the index (a
/// container started, stopped, a resynchronisation, Docker followed or not).
#[test]
fn every_change_forgets_what_connections_remembered() {
    let index = ContainerIndex::new();
    let changes: [(&str, &dyn Fn()); 4] = [
        ("upsert", &|| {
            index.upsert(container("a", "172.17.0.2", &["IAM_ROLE=ra"]));
        }),
        ("remove", &|| {
            index.remove(&"a".repeat(64));
        }),
        ("replace_all", &|| {
            index.replace_all(vec![container("b", "172.17.0.3", &[])]);
        }),
        ("set_live", &|| index.set_live(true)),
    ];
    for (name, change) in changes {
        // Counted on this thread: a bump by a test running beside this one cannot stand in.
        let noted = crate::generation::bumps_on_this_thread();
        change();
        assert!(
            crate::generation::bumps_on_this_thread() > noted,
            "{name} left the count of changes as it was"
        );
    }
}
