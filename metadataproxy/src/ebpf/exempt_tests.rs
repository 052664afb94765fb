//! Which cgroups are exempt from the redirect (`EBPF_REDIRECT_HOST=false`): the classification of a
//! cgroup tree by the policy given, as the policy changes, and the map's reconciliation.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::sync::Mutex;

use super::*;

/// A cgroup tree in a temporary folder, standing in for the cgroup2 mount.
struct Host {
    root: tempfile::TempDir,
}

impl Host {
    fn new(dirs: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d.trim_start_matches('/'))).unwrap();
        }
        Self { root }
    }

    fn cgroup2(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    fn id(&self, dir: &str) -> u64 {
        let path = self.cgroup2().join(dir.trim_start_matches('/'));
        std::fs::metadata(path).unwrap().ino()
    }

    fn ids(&self, dirs: &[&str]) -> HashSet<u64> {
        dirs.iter().map(|d| self.id(d)).collect()
    }
}

/// A policy keeping the cgroups at and below the paths it holds redirected (`None`: unknown),
/// changed by the test between scans.
#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<Option<Vec<String>>>>);

impl Fake {
    fn set(&self, redirected: Option<&[&str]>) {
        *self.0.lock().unwrap() = redirected.map(|r| r.iter().map(|p| (*p).to_owned()).collect());
    }
}

impl RedirectPolicy for Fake {
    fn classifier(&mut self) -> Option<Classifier> {
        let redirected = self.0.lock().unwrap().clone()?;
        Some(Arc::new(move |path: &str| {
            redirected
                .iter()
                .any(|r| path == r || path.starts_with(&format!("{r}/")))
        }))
    }

    fn watched(&self) -> Option<&Path> {
        None
    }
}

const DIRS: &[&str] = &[
    "/system.slice/cron.service",
    "/system.slice/batch.service/worker",
    "/k8s.io/anything",
    "/user.slice/user-1000.slice/session-1.scope",
];

/// Every cgroup of [`DIRS`] with its ancestors and the root.
fn all(host: &Host) -> HashSet<u64> {
    crate::cgroup::tree(&host.cgroup2(), "/")
        .into_keys()
        .collect()
}

#[test]
fn host_cgroups_are_all_but_what_the_policy_keeps_redirected_as_it_changes() {
    let host = Host::new(DIRS);
    assert_eq!(all(&host).len(), 10, "the root and every folder");
    let policy = Fake::default();
    let mut hosts = HostCgroups::new(host.cgroup2(), vec!["/".into()], Box::new(policy.clone()));
    // An unknown policy: no cgroup is known to be a host cgroup, so none is exempt.
    assert_eq!(hosts.find(), None);

    // The policy is asked by cgroup path below the mount, subtrees included.
    policy.set(Some(&["/system.slice/batch.service", "/k8s.io"]));
    let batch = host.ids(&[
        "/system.slice/batch.service",
        "/system.slice/batch.service/worker",
    ]);
    let k8s = host.ids(&["/k8s.io", "/k8s.io/anything"]);
    assert_eq!(hosts.find().unwrap(), &(&all(&host) - &batch) - &k8s);

    // Asked again at every scan: what it redirects now is what counts.
    policy.set(Some(&["/system.slice/cron.service"]));
    let found = hosts.find().unwrap();
    assert_eq!(
        found,
        &all(&host) - &host.ids(&["/system.slice/cron.service"])
    );

    // Unknown again: nothing is exempt (the map is emptied by the scan that follows).
    policy.set(None);
    assert_eq!(hosts.find(), None);
}

#[test]
fn a_roots_subtree_only() {
    let host = Host::new(DIRS);
    let policy = Fake::default();
    policy.set(Some(&[]));
    let mut hosts = HostCgroups::new(
        host.cgroup2(),
        vec!["/system.slice".into()],
        Box::new(policy),
    );
    let found = hosts.find().unwrap();
    assert_eq!(
        found,
        host.ids(&[
            "/system.slice",
            "/system.slice/cron.service",
            "/system.slice/batch.service",
            "/system.slice/batch.service/worker",
        ])
    );
}

#[test]
fn reconciling_removes_what_is_no_longer_a_host_cgroup_and_adds_the_new() {
    let present: HashSet<u64> = [1, 2, 3].into();
    let host: HashSet<u64> = [2, 3, 4, 5].into();
    let (mut remove, mut add) = reconcile(&present, &host);
    remove.sort_unstable();
    add.sort_unstable();
    assert_eq!((remove, add), (vec![1], vec![4, 5]));
    let (remove, add) = reconcile(&host, &host);
    assert!(remove.is_empty() && add.is_empty());
    let (mut remove, add) = reconcile(&present, &HashSet::new());
    remove.sort_unstable();
    assert_eq!((remove, add), (vec![1, 2, 3], vec![]));
}
