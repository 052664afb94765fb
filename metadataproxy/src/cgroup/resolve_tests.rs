//! The id → path resolver over a directory tree standing in for the cgroup2 mount (ids are inode
//! numbers either way): re-checks, single flight, the cache of ids gone.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::mpsc;

use super::*;

struct Tree(tempfile::TempDir);

impl Tree {
    fn new(dirs: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        Self(root)
    }

    fn root(&self) -> PathBuf {
        self.0.path().to_owned()
    }

    fn ino(&self, dir: &str) -> u64 {
        std::fs::metadata(self.0.path().join(dir)).unwrap().ino()
    }

    fn dir(&self, dir: &str) -> PathBuf {
        self.0.path().join(dir)
    }
}

#[tokio::test]
async fn resolves_ids_and_forgets_removed_cgroups() {
    // cgroupfs never reuses an id; a plain directory tree may reuse an inode number at once, so
    // every directory is made before any is removed.
    let tree = Tree::new(&["a/b"]);
    let paths = CgroupPaths::new(tree.root());
    let b = tree.ino("a/b");
    assert_eq!(paths.resolve(b).await.as_deref(), Some("/a/b"));
    assert_eq!(paths.resolve(tree.ino("")).await.as_deref(), Some("/"));
    assert_eq!(paths.walks(), 1, "the second id came from the first walk");
    std::fs::create_dir(tree.dir("a/c")).unwrap();
    let c = tree.ino("a/c");
    std::fs::remove_dir(tree.dir("a/b")).unwrap();
    assert_eq!(
        paths.resolve(b).await,
        None,
        "a removed cgroup is not served from the cache"
    );
    assert_eq!(paths.resolve(c).await.as_deref(), Some("/a/c"));
}

#[tokio::test]
async fn a_cached_path_now_holding_another_cgroup_is_not_served() {
    // The inode re-check: `/a/x` is cached for x; then x goes and y takes its name.
    let tree = Tree::new(&["a/x", "a/y"]);
    let (x, y) = (tree.ino("a/x"), tree.ino("a/y"));
    let paths = CgroupPaths::new(tree.root());
    assert_eq!(paths.resolve(x).await.as_deref(), Some("/a/x"));
    std::fs::remove_dir(tree.dir("a/x")).unwrap();
    std::fs::rename(tree.dir("a/y"), tree.dir("a/x")).unwrap();
    assert_eq!(paths.resolve(x).await, None, "x is gone");
    assert_eq!(
        paths.resolve(y).await.as_deref(),
        Some("/a/x"),
        "y was renamed"
    );
}

#[tokio::test]
async fn a_renamed_cgroup_is_found_at_its_new_path() {
    let tree = Tree::new(&["a/x"]);
    let x = tree.ino("a/x");
    let paths = CgroupPaths::new(tree.root());
    assert_eq!(paths.resolve(x).await.as_deref(), Some("/a/x"));
    std::fs::rename(tree.dir("a/x"), tree.dir("a/z")).unwrap();
    assert_eq!(paths.resolve(x).await.as_deref(), Some("/a/z"));
}

/// A walker that lists the tree at once, then waits for the test to release it (so a walk in
/// flight has a listing older than what the test does meanwhile).
fn gated() -> (Walker, mpsc::Sender<()>) {
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let walker: Walker = Arc::new(move |root: &Path| {
        let mut found = HashMap::new();
        walk(root, "", &mut found);
        let _ = gate.lock().unwrap().recv();
        found
    });
    (walker, release)
}

async fn until_walks(paths: &CgroupPaths, n: u64) {
    while paths.walks() < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Let every lookup in flight reach the walk.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_ids_share_walks_and_gone_ids_cost_none() {
    let tree = Tree::new(&["a/b"]);
    let (walker, release) = gated();
    let paths = Arc::new(CgroupPaths::with(tree.root(), GONE_MAX, walker));
    let unknown: Vec<u64> = (0..64).map(|i| u64::MAX - i).collect();
    let lookups: Vec<_> = unknown
        .iter()
        .map(|&id| {
            let paths = Arc::clone(&paths);
            tokio::spawn(async move { paths.resolve(id).await })
        })
        .collect();
    // The first walk may have begun before some of the lookups: those need a second one,
    // which they all share.
    until_walks(&paths, 1).await;
    release.send(()).unwrap();
    until_walks(&paths, 2).await;
    release.send(()).unwrap();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), None);
    }
    assert_eq!(paths.walks(), 2, "64 unknown ids at once");
    for &id in &unknown {
        assert_eq!(paths.resolve(id).await, None);
    }
    assert_eq!(paths.walks(), 2, "an id proven gone is answered at once");
    // A known id is answered from the cache (one stat), not a walk.
    assert_eq!(
        paths.resolve(tree.ino("a/b")).await.as_deref(),
        Some("/a/b")
    );
    assert_eq!(paths.walks(), 2);
}

#[tokio::test]
async fn the_cache_of_gone_ids_is_bounded() {
    let tree = Tree::new(&["a"]);
    let walker: Walker = Arc::new(|root: &Path| {
        let mut found = HashMap::new();
        walk(root, "", &mut found);
        found
    });
    let paths = CgroupPaths::with(tree.root(), 2, walker);
    for id in [u64::MAX, u64::MAX - 1, u64::MAX - 2] {
        assert_eq!(paths.resolve(id).await, None);
    }
    assert_eq!(paths.walks(), 3);
    assert_eq!(paths.resolve(u64::MAX - 2).await, None);
    assert_eq!(paths.walks(), 3, "still remembered");
    assert_eq!(paths.resolve(u64::MAX).await, None);
    assert_eq!(paths.walks(), 4, "the oldest was forgotten: walked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_begun_before_the_question_does_not_prove_an_id_gone() {
    let tree = Tree::new(&["a"]);
    let (walker, release) = gated();
    let paths = Arc::new(CgroupPaths::with(tree.root(), GONE_MAX, walker));
    let first = {
        let paths = Arc::clone(&paths);
        tokio::spawn(async move { paths.resolve(u64::MAX).await })
    };
    while paths.walks() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    std::fs::create_dir(tree.dir("a/new")).unwrap();
    let new = tree.ino("a/new");
    let second = {
        let paths = Arc::clone(&paths);
        tokio::spawn(async move { paths.resolve(new).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap(), None);
    release.send(()).unwrap();
    assert_eq!(second.await.unwrap().as_deref(), Some("/a/new"));
    assert_eq!(paths.walks(), 2);
}

#[test]
fn the_cache_never_outgrows_its_bound_and_drops_older_entries_first() {
    let paths = |ids: &[u64]| -> HashMap<u64, Arc<str>> {
        ids.iter()
            .map(|id| (*id, Arc::from(format!("/{id}"))))
            .collect()
    };
    // Room for both: the older entry stays (up to exactly full).
    let mut cache = paths(&[1]);
    remember(&mut cache, &paths(&[2, 3]), 3);
    assert_eq!(cache.len(), 3);
    assert!(cache.contains_key(&1));
    // No room: the older entries go, the walk's stay.
    remember(&mut cache, &paths(&[4, 5, 6]), 3);
    let mut ids: Vec<u64> = cache.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [4, 5, 6]);
    let mut small = paths(&[1]);
    remember(&mut small, &paths(&[2, 3]), 2);
    let mut ids: Vec<u64> = small.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [2, 3], "one over: the older entry goes");
    // A walk larger than the bound: only as much as fits.
    remember(&mut cache, &paths(&[7, 8, 9, 10, 11]), 3);
    assert_eq!(cache.len(), 3);
    assert!(cache.keys().all(|id| (7..=11).contains(id)));
}

#[test]
fn debug_names_the_mount_and_the_walks() {
    let paths = CgroupPaths::new(PathBuf::from("/sys/fs/cgroup/x"));
    let shown = format!("{paths:?}");
    assert!(
        shown.contains("/sys/fs/cgroup/x") && shown.contains("walks: 0"),
        "{shown}"
    );
}
