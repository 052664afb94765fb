//! The cgroup2 tree: every cgroup below a directory of the mount, by id (its inode number).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;

/// `ino → path` of the cgroup at `rel` (below the cgroup2 mount `root`) and every cgroup below it.
pub fn tree(root: &Path, rel: &str) -> HashMap<u64, Arc<str>> {
    let rel = rel.trim_end_matches('/');
    let mut out = HashMap::new();
    walk(&root.join(rel.trim_start_matches('/')), rel, &mut out);
    out
}

/// Records `ino → path` for `dir` (at `rel`) and every cgroup below it.
pub(super) fn walk(dir: &Path, rel: &str, out: &mut HashMap<u64, Arc<str>>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let path: Arc<str> = if rel.is_empty() {
        "/".into()
    } else {
        rel.into()
    };
    out.insert(meta.ino(), path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name();
            let child = format!("{rel}/{}", name.to_string_lossy());
            walk(&entry.path(), &child, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_lists_a_subtree_with_its_paths() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::create_dir_all(root.path().join("c")).unwrap();
        let ino = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().ino();
        let all = tree(root.path(), "/");
        assert_eq!(all.len(), 4);
        assert_eq!(all.get(&ino("")).map(|p| &**p), Some("/"));
        assert_eq!(all.get(&ino("a/b")).map(|p| &**p), Some("/a/b"));
        let sub = tree(root.path(), "/a/");
        let mut paths: Vec<&str> = sub.values().map(|p| &**p).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["/a", "/a/b"]);
        assert!(tree(root.path(), "/gone").is_empty());
    }
}
