//! The watcher against the real cgroupfs (as root, with cgroup v2): a cgroup made or removed is
//! reported at once, also below a cgroup made after the first watch; nothing else wakes it.

use std::time::{Duration, Instant};

use super::*;

/// A fresh cgroup directory below the cgroup2 mount, removed (deepest first) when dropped.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The test cgroup, or why this machine cannot have one.
fn test_cgroup() -> Result<TestCgroup, String> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| format!("cannot read this process's mounts: {e}"))?;
    let mount = crate::ebpf::cgroup2_mount(&mounts).ok_or("no cgroup v2 mount")?;
    let dir = mount.join(format!("mp-watch-test-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!("making a cgroup needs root: {e}"));
        }
        Err(e) => panic!("cannot make {}: {e}", dir.display()),
    }
    Ok(TestCgroup(dir))
}

/// `wait` with a long timeout returns `true` soon after `change` runs on another thread.
fn reported_promptly(watch: &CgroupWatch, what: &str, change: impl FnOnce() + Send + 'static) {
    let started = Instant::now();
    let changer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        change();
    });
    assert!(
        watch.wait(Duration::from_secs(30)).expect("wait"),
        "{what}: not reported"
    );
    let took = started.elapsed();
    changer.join().expect("changer thread");
    assert!(
        took < Duration::from_secs(2),
        "{what}: reported after {took:?}"
    );
}

#[test]
fn cgroups_made_and_removed_are_reported_at_once() {
    let root = match test_cgroup() {
        Ok(root) => root,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let watch = CgroupWatch::new(vec![root.0.clone()], None).expect("inotify");
    assert_eq!(watch.watch_all().expect("watch"), 1);
    assert!(
        !watch.wait(Duration::from_millis(200)).expect("wait"),
        "woken with no change"
    );

    let child = root.0.join("service-a");
    let made = child.clone();
    reported_promptly(&watch, "a new cgroup", move || {
        std::fs::create_dir(&made).expect("mkdir");
    });
    // The new cgroup is watched from the next watch_all on: one made inside it is reported too.
    assert_eq!(watch.watch_all().expect("watch"), 2);
    let grandchild = child.join("worker");
    let made = grandchild.clone();
    reported_promptly(&watch, "a cgroup below a new one", move || {
        std::fs::create_dir(&made).expect("mkdir");
    });
    reported_promptly(&watch, "a removed cgroup", move || {
        std::fs::remove_dir(&grandchild).expect("rmdir");
    });
    assert!(
        !watch.wait(Duration::from_millis(200)).expect("wait"),
        "events were left unread"
    );
}

#[test]
fn a_mapping_file_replaced_in_its_folder_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("roles.json");
    std::fs::write(&file, "{}").expect("write");
    let watch = CgroupWatch::new(Vec::new(), Some(dir.path().to_owned())).expect("inotify");
    watch.watch_all().expect("watch");
    let tmp = dir.path().join(".roles.json.new");
    reported_promptly(&watch, "a mapping file renamed over", move || {
        std::fs::write(&tmp, r#"{"cgroup:/a": "r"}"#).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    });
}
