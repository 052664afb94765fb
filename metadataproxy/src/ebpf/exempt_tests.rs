//! Which cgroups are exempt from the redirect (`EBPF_REDIRECT_HOST=false`): the classification of a
//! cgroup tree against the role mapping as the file changes, and the map's reconciliation.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::*;

const ID: &str = "3f4e9b0c1d2a8e7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";

/// A cgroup tree in a temporary folder (standing in for the cgroup2 mount) and a mapping file.
struct Host {
    root: tempfile::TempDir,
    mapping: PathBuf,
}

impl Host {
    fn new(dirs: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join("cg").join(d.trim_start_matches('/')))
                .unwrap();
        }
        let mapping = root.path().join("mapping.json");
        Self { root, mapping }
    }

    fn cgroup2(&self) -> PathBuf {
        self.root.path().join("cg")
    }

    fn id(&self, dir: &str) -> u64 {
        let path = self.cgroup2().join(dir.trim_start_matches('/'));
        std::fs::metadata(path).unwrap().ino()
    }

    fn ids(&self, dirs: &[&str]) -> HashSet<u64> {
        dirs.iter().map(|d| self.id(d)).collect()
    }

    fn write_mapping(&self, text: &str) {
        write_atomically(&self.mapping, text);
    }

    fn classifier(&self, mapping: bool) -> HostCgroups {
        HostCgroups::new(
            self.cgroup2(),
            vec!["/".to_owned()],
            vec!["k8s.io".to_owned()],
            mapping.then(|| self.mapping.clone()),
        )
    }
}

/// Replaces `path` as operators and `ConfigMap`s do (rename over it).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const DIRS: &[&str] = &[
    "/system.slice/cron.service",
    "/system.slice/batch.service/worker",
    "/k8s.io/anything",
    "/user.slice/user-1000.slice/session-1.scope",
];

/// Every cgroup of [`DIRS`] with its ancestors, and the container's.
fn all(host: &Host) -> HashSet<u64> {
    crate::cgroup::tree(&host.cgroup2(), "/")
        .into_keys()
        .collect::<HashSet<u64>>()
        .difference(&host.ids(&[
            &format!("/system.slice/docker-{ID}.scope"),
            "/k8s.io",
            "/k8s.io/anything",
        ]))
        .copied()
        .collect()
}

#[test]
fn host_cgroups_are_all_but_containers_and_what_the_mapping_names() {
    let mut dirs = DIRS.to_vec();
    let container = format!("/system.slice/docker-{ID}.scope");
    dirs.push(&container);
    let host = Host::new(&dirs);
    // Without a mapping file: every cgroup that is no container's.
    let found = host.classifier(false).find().unwrap();
    assert_eq!(found, all(&host));
    assert!(
        !found.contains(&host.id(&container)),
        "a container is redirected"
    );
    assert!(
        !found.contains(&host.id("/k8s.io/anything")),
        "a containerd namespace is"
    );

    // A `cgroup:` key takes its cgroup and everything below it out of the exemptions.
    host.write_mapping(r#"{"cgroup:/system.slice/batch.service": "batch"}"#);
    let mut hosts = host.classifier(true);
    let found = hosts.find().unwrap();
    let mapped = host.ids(&[
        "/system.slice/batch.service",
        "/system.slice/batch.service/worker",
    ]);
    assert_eq!(found, &all(&host) - &mapped);
    assert!(found.contains(&host.id("/system.slice/cron.service")));
}

#[test]
fn the_mapping_is_followed_as_it_changes_and_a_broken_one_keeps_the_last_good() {
    let host = Host::new(DIRS);
    let (cron, batch) = (
        host.id("/system.slice/cron.service"),
        host.id("/system.slice/batch.service"),
    );
    // No mapping file yet: nothing is known to be a host cgroup, so nothing is exempt.
    let mut hosts = host.classifier(true);
    assert_eq!(hosts.find(), None);

    host.write_mapping(r#"{"cgroup:/system.slice/batch.service": "batch"}"#);
    let found = hosts.find().unwrap();
    assert!(found.contains(&cron) && !found.contains(&batch));

    // Changed: cron is mapped now, batch no longer.
    host.write_mapping(r#"{"cgroup:/system.slice/cron.service": "cron"}"#);
    let found = hosts.find().unwrap();
    assert!(!found.contains(&cron) && found.contains(&batch));

    // Broken, then gone: the last good mapping stays in force.
    host.write_mapping(r#"{"cgroup:/system.slice/cron.service": "#);
    let found = hosts.find().unwrap();
    assert!(!found.contains(&cron) && found.contains(&batch));
    std::fs::remove_file(&host.mapping).unwrap();
    assert_eq!(hosts.find(), Some(found));

    // Not UTF-8: kept too.
    std::fs::write(&host.mapping, [0xff, 0xfe, b'{']).unwrap();
    let found = hosts.find().unwrap();
    assert!(!found.contains(&cron) && found.contains(&batch));

    // Good again.
    host.write_mapping("{}");
    let found = hosts.find().unwrap();
    assert!(found.contains(&cron) && found.contains(&batch));
}

#[test]
fn a_roots_subtree_only() {
    let host = Host::new(DIRS);
    let mut hosts = HostCgroups::new(host.cgroup2(), vec!["/system.slice".into()], vec![], None);
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
