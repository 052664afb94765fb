//! containerd identification through the real synchroniser and index, fed by the fake container
//! source, over a cgroup tree in a temporary folder.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::containers::fake::FakeRuntime;
use crate::containers::{ContainerInfo, NoListener, SyncConfig};
use crate::identity::Chain;
use crate::role::{RoleAssignment, RoleSpec};

const CRI_ID: &str = "7be7ca56452ce0f69575654683e3b8cdc61d8898d06caf92fbf5ffffcd856bd7";

/// A temporary cgroup tree, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(dirs: &[&str]) -> Self {
        let root = std::env::temp_dir().join(format!(
            "mp-ctd-cgroups-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in dirs {
            std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).unwrap();
        }
        Self(root)
    }

    fn ino(&self, dir: &str) -> u64 {
        std::fs::metadata(self.0.join(dir.trim_start_matches('/')))
            .unwrap()
            .ino()
    }

    fn root(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info(key: &str, cgroup: &str, env: &[&str], pod: &[(&str, &str)]) -> ContainerInfo {
    ContainerInfo {
        id: key.to_owned(),
        name: key.to_owned(),
        running: true,
        env: env.iter().map(|e| (*e).to_owned()).collect(),
        cgroup: Some(cgroup.to_owned()),
        pod_annotations: pod
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        ..ContainerInfo::default()
    }
}

fn conn(cgroup_id: u64) -> ConnInfo {
    ConnInfo::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:45001".parse().unwrap(),
        Some(crate::caller::KernelRecord {
            cgroup_id,
            pid: 4242,
            netns_cookie: 1,
        }),
    )
}

/// `role@source`, `refused@source` (a source that knew the caller gave nothing), or `none`.
async fn who(chain: &Chain, cgroup_id: u64) -> String {
    match chain.identify(&conn(cgroup_id)).await.assignment {
        Some((a, source)) => format!("{}@{}", a.role, source.as_str()),
        None => "none".into(),
    }
}

struct Setup {
    tree: Tree,
    fake: FakeRuntime,
    index: Arc<ContainerIndex>,
    chain: Chain,
}

async fn setup(dirs: &[&str], default_role: Option<&str>) -> Setup {
    let tree = Tree::new(dirs);
    let fake = FakeRuntime::default();
    let config = SyncConfig {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..SyncConfig::default()
    };
    let (index, _task) =
        crate::containers::spawn(Arc::new(fake.clone()), Arc::new(NoListener), config);
    let paths = Arc::new(CgroupPaths::new(tree.root().to_path_buf()));
    let namespaces = ["k8s.io".to_owned(), "default".to_owned()];
    let source = ContainerdCgroup::new(Arc::clone(&index), paths, &namespaces);
    let default_role = default_role.map(|r| RoleAssignment::from_role(RoleSpec::parse(r).unwrap()));
    let chain = Chain::new(vec![Box::new(source)], default_role);
    settle(&index, true).await;
    Setup {
        tree,
        fake,
        index,
        chain,
    }
}

async fn settle(index: &ContainerIndex, live: bool) {
    for _ in 0..200 {
        if index.is_live() == live {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("index never became live={live}");
}

#[tokio::test]
async fn pods_and_plain_containers_get_their_roles_by_cgroup() {
    let pod = format!("/kubepods/besteffort/pod01b4/{CRI_ID}");
    let systemd = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice/cri-containerd-{}.scope",
        "a".repeat(64)
    );
    let s = setup(
        &[
            &pod,
            &systemd,
            "/default/web",
            "/default/plain",
            "/system.slice/web",
        ],
        Some("fallback"),
    )
    .await;
    let role_pod = [("iam.amazonaws.com/role", "pod-role")];
    s.fake
        .start(info(&format!("k8s.io/{CRI_ID}"), &pod, &[], &role_pod));
    s.fake.start(info(
        &format!("k8s.io/{}", "a".repeat(64)),
        &systemd,
        &["IAM_ROLE=own-role"],
        &role_pod,
    ));
    s.fake.start(info(
        "default/web",
        "/default/web",
        &["IAM_ROLE=web-role"],
        &[],
    ));
    s.fake
        .start(info("default/plain", "/default/plain", &[], &[]));
    tokio::time::sleep(Duration::from_millis(50)).await;

    assert_eq!(
        who(&s.chain, s.tree.ino(&pod)).await,
        "pod-role@containerd_cgroup"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino(&systemd)).await,
        "own-role@containerd_cgroup",
        "the container's own IAM_ROLE wins over its pod's annotation"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino("/default/web")).await,
        "web-role@containerd_cgroup"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino("/default/plain")).await,
        "fallback@containerd_cgroup",
        "a container naming no role gets DEFAULT_ROLE"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino("/system.slice/web")).await,
        "fallback@default_role",
        "a host cgroup named like a container is not that container"
    );
}

#[tokio::test]
async fn look_alikes_of_a_followed_container_are_refused() {
    let pod = format!("/kubepods/besteffort/pod01b4/{CRI_ID}");
    let below = format!("{pod}/sub");
    let scope = format!("/user.slice/user-1000.slice/x/cri-containerd-{CRI_ID}.scope");
    let bare = format!("/user.slice/user-1000.slice/kubepods/pod01b4/{CRI_ID}");
    let s = setup(
        &[
            &below,
            &scope,
            &bare,
            "/user.slice/default/web",
            "/default/web",
        ],
        Some("fallback"),
    )
    .await;
    s.fake.start(info(
        &format!("k8s.io/{CRI_ID}"),
        &pod,
        &["IAM_ROLE=pod-role"],
        &[],
    ));
    s.fake
        .start(info("default/web", "/default/web", &["IAM_ROLE=web"], &[]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        who(&s.chain, s.tree.ino(&pod)).await,
        "pod-role@containerd_cgroup"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino(&below)).await,
        "pod-role@containerd_cgroup",
        "below the container's cgroup"
    );
    for look_alike in [&scope, &bare] {
        let started = std::time::Instant::now();
        assert_eq!(
            who(&s.chain, s.tree.ino(look_alike)).await,
            "none",
            "{look_alike}: refused, not DEFAULT_ROLE"
        );
        assert!(started.elapsed() < START_GRACE, "refused at once");
    }
    // Ids that are not container ids are not claims: the chain goes on, as for any host cgroup.
    assert_eq!(
        who(&s.chain, s.tree.ino("/user.slice/default/web")).await,
        "fallback@default_role"
    );
}

#[tokio::test]
async fn a_container_whose_task_exits_is_forgotten_at_once() {
    let s = setup(&["/default/web"], None).await;
    s.fake.start(info(
        "default/web",
        "/default/web",
        &["IAM_ROLE=web-role"],
        &[],
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ino = s.tree.ino("/default/web");
    assert_eq!(who(&s.chain, ino).await, "web-role@containerd_cgroup");
    s.fake.stop("default/web");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.index.by_id("default/web").is_none());
    let started = std::time::Instant::now();
    assert_eq!(who(&s.chain, ino).await, "none");
    assert!(
        started.elapsed() >= START_GRACE,
        "an unknown containerd cgroup waits for its start event"
    );
}

#[tokio::test]
async fn a_container_starting_while_it_calls_is_waited_for() {
    let s = setup(&["/default/late"], None).await;
    let ino = s.tree.ino("/default/late");
    let fake = s.fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.start(info(
            "default/late",
            "/default/late",
            &["IAM_ROLE=late-role"],
            &[],
        ));
    });
    assert_eq!(who(&s.chain, ino).await, "late-role@containerd_cgroup");
}

#[tokio::test]
async fn an_unreachable_containerd_fails_closed_for_its_unknown_containers_only() {
    let pod = format!("/kubepods/besteffort/pod1/{CRI_ID}");
    let s = setup(
        &[&pod, "/default/known", "/system.slice/cron.service"],
        Some("fallback"),
    )
    .await;
    s.fake.start(info(
        "default/known",
        "/default/known",
        &["IAM_ROLE=known-role"],
        &[],
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.fake.set_down(true);
    s.fake.break_streams();
    settle(&s.index, false).await;
    assert_eq!(
        who(&s.chain, s.tree.ino(&pod)).await,
        "none",
        "a pod's container must not get DEFAULT_ROLE because containerd is away"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino("/default/known")).await,
        "known-role@containerd_cgroup",
        "containers known before containerd went away are still served"
    );
    assert_eq!(
        who(&s.chain, s.tree.ino("/system.slice/cron.service")).await,
        "fallback@default_role",
        "host callers are not containerd's business"
    );
    s.fake.set_down(false);
    s.fake.start(info(
        &format!("k8s.io/{CRI_ID}"),
        &pod,
        &["IAM_ROLE=back"],
        &[],
    ));
    settle(&s.index, true).await;
    assert_eq!(
        who(&s.chain, s.tree.ino(&pod)).await,
        "back@containerd_cgroup"
    );
}

#[test]
fn containerd_shaped_paths() {
    let index = ContainerIndex::new();
    let paths = Arc::new(CgroupPaths::new(PathBuf::from("/nonexistent")));
    let s = ContainerdCgroup::new(index, paths, &["k8s.io".into(), "default".into()]);
    for (path, want) in [
        (format!("/kubepods/besteffort/pod1/{CRI_ID}"), true),
        (
            format!("/kubepods.slice/x.slice/cri-containerd-{CRI_ID}.scope"),
            true,
        ),
        (format!("/k8s.io/{CRI_ID}"), true),
        ("/default/web".to_owned(), true),
        ("/default".to_owned(), false),
        (format!("/docker/{CRI_ID}"), false),
        (format!("/system.slice/docker-{CRI_ID}.scope"), false),
        ("/system.slice/cron.service".to_owned(), false),
        ("/other-ns/web".to_owned(), false),
    ] {
        assert_eq!(s.is_containerd_path(&path), want, "{path}");
    }
}

#[tokio::test]
async fn a_containerd_cgroup_unknown_while_containerd_cannot_describe_some_is_refused() {
    let pod = format!("/kubepods/besteffort/pod2/{CRI_ID}");
    let s = setup(&[&pod, "/system.slice/cron.service"], Some("fallback")).await;
    // containerd runs a container it cannot describe (its cgroup unknown too): a containerd
    // cgroup no followed container has may be that one, so it gets nothing, not DEFAULT_ROLE.
    s.index.set_unreadable([format!("k8s.io/{CRI_ID}")]);
    assert_eq!(who(&s.chain, s.tree.ino(&pod)).await, "none");
    assert_eq!(
        who(&s.chain, s.tree.ino("/system.slice/cron.service")).await,
        "fallback@default_role",
        "host callers are not containerd's business"
    );
    // Nothing left undescribed: such a cgroup is no claim, as before.
    s.index.set_unreadable([]);
    assert_eq!(
        who(&s.chain, s.tree.ino(&pod)).await,
        "fallback@default_role"
    );
}
