//! Token files read through a root: paths, symlinks that try to leave it, sizes, file types.

use std::os::unix::fs::symlink;

use procfs::{FromRead as _, ProcessCGroups};

use super::{MAX_BYTES, TokenFileError, read, read_in};

/// A fake container root with a host file outside it holding a secret.
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn root() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/run/secrets")).unwrap();
    let outside = dir.path().join("host-secret");
    std::fs::write(&outside, "HOST-SECRET").unwrap();
    Fixture {
        _dir: dir,
        root,
        outside,
    }
}

fn read_ok(r: &Fixture, path: &str) -> String {
    read_in(&r.root, path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .expose()
        .to_owned()
}

#[test]
fn reads_the_token_and_drops_one_trailing_line_break() {
    let r = root();
    let file = r.root.join("var/run/secrets/token");
    for (content, want) in [
        ("tok-1", "tok-1"),
        ("tok-2\n", "tok-2"),
        ("tok-3\r\n", "tok-3"),
        ("eyJhbGciOi.eyJzdWIi.c2ln", "eyJhbGciOi.eyJzdWIi.c2ln"),
    ] {
        std::fs::write(&file, content).unwrap();
        assert_eq!(read_ok(&r, "/var/run/secrets/token"), want, "{content:?}");
    }
}

#[test]
fn a_rotated_file_is_read_anew() {
    let r = root();
    let dir = r.root.join("var/run/secrets");
    std::fs::write(dir.join("token"), "old").unwrap();
    assert_eq!(read_ok(&r, "/var/run/secrets/token"), "old");
    // Rotation as Kubernetes does it: a new file renamed over the old one.
    std::fs::write(dir.join(".new"), "new").unwrap();
    std::fs::rename(dir.join(".new"), dir.join("token")).unwrap();
    assert_eq!(read_ok(&r, "/var/run/secrets/token"), "new");
}

#[test]
fn symlinks_and_dot_dot_stay_inside_the_root() {
    let r = root();
    let secrets = r.root.join("var/run/secrets");
    // An absolute symlink to the host file's path, a relative one climbing out, and `..` in the
    // path itself: each resolves inside the root, where there is no such file.
    symlink(&r.outside, secrets.join("abs")).unwrap();
    symlink("../../../../host-secret", secrets.join("rel")).unwrap();
    for path in [
        "/var/run/secrets/abs",
        "/var/run/secrets/rel",
        "/../host-secret",
        "/var/../../host-secret",
    ] {
        match read_in(&r.root, path) {
            Err(TokenFileError::Open(_)) => {}
            other => panic!("{path}: {:?}", other.map(|s| s.expose().to_owned())),
        }
    }
    // The same links find a file of that name inside the root: the container's, not the host's.
    std::fs::write(r.root.join("host-secret"), "container-token").unwrap();
    std::fs::create_dir_all(
        r.root
            .join(r.outside.parent().unwrap().strip_prefix("/").unwrap()),
    )
    .unwrap();
    std::fs::write(
        r.root.join(r.outside.strip_prefix("/").unwrap()),
        "container-token",
    )
    .unwrap();
    for path in [
        "/var/run/secrets/abs",
        "/var/run/secrets/rel",
        "/../host-secret",
    ] {
        assert_eq!(read_ok(&r, path), "container-token", "{path}");
    }
}

#[test]
fn magic_links_are_refused() {
    // With the real `/` as root, `/proc/self/root` is a magic link (to this process's root):
    // following one could leave any root, so it is refused even where it would not.
    let got = read_in(std::path::Path::new("/"), "/proc/self/root/etc/hostname");
    assert!(
        matches!(got, Err(TokenFileError::Open(nix::errno::Errno::ELOOP))),
        "{:?}",
        got.map(|s| s.expose().to_owned())
    );
}

#[test]
fn a_relative_path_is_refused() {
    let r = root();
    std::fs::write(r.root.join("token"), "t").unwrap();
    assert!(matches!(
        read_in(&r.root, "token"),
        Err(TokenFileError::NotAbsolute)
    ));
}

#[test]
fn sizes_at_and_over_the_limit() {
    let r = root();
    let file = r.root.join("token");
    std::fs::write(&file, "a".repeat(MAX_BYTES)).unwrap();
    assert_eq!(read_ok(&r, "/token").len(), MAX_BYTES);
    std::fs::write(&file, "a".repeat(MAX_BYTES + 1)).unwrap();
    assert!(matches!(
        read_in(&r.root, "/token"),
        Err(TokenFileError::TooLarge)
    ));
    std::fs::write(&file, "a".repeat(10 * MAX_BYTES)).unwrap();
    assert!(matches!(
        read_in(&r.root, "/token"),
        Err(TokenFileError::TooLarge)
    ));
}

#[test]
fn empty_multi_line_and_binary_files_are_refused() {
    let r = root();
    let file = r.root.join("token");
    for (content, what) in [
        (&b""[..], "empty"),
        (b"\n", "a bare line break"),
        (b"line-1\nline-2", "two lines"),
        (b"tok\r", "a carriage return"),
        (b"\xff\xfe", "not UTF-8"),
    ] {
        std::fs::write(&file, content).unwrap();
        let got = read_in(&r.root, "/token");
        assert!(
            matches!(got, Err(TokenFileError::Empty | TokenFileError::NotText)),
            "{what}: {:?}",
            got.map(|s| s.expose().to_owned())
        );
    }
}

#[test]
fn directories_fifos_and_devices_are_not_read() {
    let r = root();
    nix::unistd::mkfifo(&r.root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    symlink("/dev/zero", r.root.join("zero")).unwrap();
    std::fs::create_dir_all(r.root.join("dev")).unwrap();
    // A FIFO with no writer would block a plain open; this one must fail at once.
    for path in ["/var/run/secrets", "/fifo"] {
        assert!(
            matches!(read_in(&r.root, path), Err(TokenFileError::NotAFile)),
            "{path}"
        );
    }
    // /dev/zero is resolved inside the root, where it does not exist.
    assert!(matches!(
        read_in(&r.root, "/zero"),
        Err(TokenFileError::Open(_))
    ));
}

/// This process's cgroup v2 path.
fn own_cgroup() -> String {
    let cgroups = procfs::process::Process::myself()
        .and_then(|p| p.cgroups())
        .expect("this process's cgroups");
    cgroups
        .0
        .into_iter()
        .find(|c| c.hierarchy == 0)
        .expect("a cgroup v2 line")
        .pathname
}

#[tokio::test]
async fn through_proc_pid_root_only_in_the_containers_cgroup() {
    // This process's own root is `/`: a file by its absolute path is found through it, when the
    // "container" is this process's own cgroup.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "own-token\n").unwrap();
    let file = file.display().to_string();
    let pid = Some(std::process::id());
    let got = read(pid, &own_cgroup(), None, &file).await.unwrap();
    assert_eq!(got.expose(), "own-token");
    // Its verified cgroup: this process's own, or one it is not in.
    let own = read(pid, &own_cgroup(), Some(&own_cgroup()), &file).await;
    if own_cgroup() == "/" {
        // Run in the root cgroup (some CI sandboxes): the root is no container's.
        assert!(matches!(own, Err(TokenFileError::NotTheContainer { .. })));
    } else {
        assert_eq!(own.unwrap().expose(), "own-token");
    }
    assert!(matches!(
        read(
            pid,
            &own_cgroup(),
            Some("/elsewhere.slice/docker-x.scope"),
            &file
        )
        .await,
        Err(TokenFileError::NotTheContainer { .. })
    ));
    // Another container's id: this process is not in it (as after a pid was reused).
    assert!(matches!(
        read(pid, &"f".repeat(64), None, &file).await,
        Err(TokenFileError::NotTheContainer { .. })
    ));
    assert!(matches!(
        read(pid, "", None, &file).await,
        Err(TokenFileError::NotTheContainer { .. })
    ));
    assert!(matches!(
        read(None, &own_cgroup(), None, "/token").await,
        Err(TokenFileError::NoProcess)
    ));
    // No such process (pid_max is below 2^22).
    assert!(matches!(
        read(Some(u32::MAX), &own_cgroup(), None, "/token").await,
        Err(TokenFileError::Root { .. })
    ));
}

#[test]
fn cgroup_paths_of_docker_containers() {
    let id = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";
    for (cgroups, want) in [
        (format!("0::/docker/{id}\n"), true),
        (format!("0::/system.slice/docker-{id}.scope\n"), true),
        (format!("12:memory:/docker/{id}\n"), true),
        ("0::/docker/ffff\n".to_owned(), false),
        // The id as a v1 hierarchy's name, not in a path.
        (format!("0::/\n1:name={id}:/\n"), false),
    ] {
        let parsed = ProcessCGroups::from_read(cgroups.as_bytes()).expect("parses");
        assert_eq!(super::in_container(&parsed, id, None), want, "{cgroups:?}");
    }
    // With the container's verified cgroup: that cgroup or below it, never a look-alike that
    // only names the container (a user's `docker-<id>.scope`, a pid reused outside).
    let own = format!("/system.slice/docker-{id}.scope");
    for (cgroups, want) in [
        (format!("0::{own}\n"), true),
        (format!("0::{own}/init\n"), true),
        (
            format!("0::/user.slice/user-1000.slice/docker-{id}.scope\n"),
            false,
        ),
        (format!("0::{own}x\n"), false),
        (format!("12:memory:{own}\n"), false),
        ("0::/\n".to_owned(), false),
    ] {
        let parsed = ProcessCGroups::from_read(cgroups.as_bytes()).expect("parses");
        assert_eq!(
            super::in_container(&parsed, id, Some(&own)),
            want,
            "{cgroups:?}"
        );
    }
    assert!(
        !super::in_container(
            &ProcessCGroups::from_read("0::/x\n".as_bytes()).expect("parses"),
            id,
            Some("/")
        ),
        "the root cgroup is no container's"
    );
}

/// Watches `path` for opens (`IN_OPEN`): an `O_PATH` descriptor is not an open, reading is.
fn watch_opens(path: &std::path::Path) -> nix::sys::inotify::Inotify {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(path, AddWatchFlags::IN_OPEN).unwrap();
    inotify
}

/// How many times the watched file was opened since the last call.
fn opens(inotify: &nix::sys::inotify::Inotify) -> usize {
    match inotify.read_events() {
        Ok(events) => events.len(),
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => panic!("inotify: {e}"),
    }
}

#[test]
fn regression_a_device_node_is_never_opened() {
    // A container with CAP_MKNOD can replace its token file with a device node; the daemon (host
    // root) opening it would run the driver's open (a tape rewinds, a watchdog arms). /dev/null's
    // numbers stand in for any device; the watch shows whether it was opened at all.
    let r = root();
    let node = r.root.join("var/run/secrets/token");
    match nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) => {
            eprintln!("skipped: making a device node needs CAP_MKNOD (run as root)");
            return;
        }
        Err(e) => panic!("mknod: {e}"),
    }
    let inotify = watch_opens(&node);
    let got = read_in(&r.root, "/var/run/secrets/token");
    assert!(
        matches!(got, Err(TokenFileError::NotAFile)),
        "{:?}",
        got.map(|s| s.expose().to_owned())
    );
    assert_eq!(opens(&inotify), 0, "the device node was opened");
    // The same through a symlink the container made.
    symlink("/var/run/secrets/token", r.root.join("link")).unwrap();
    assert!(matches!(
        read_in(&r.root, "/link"),
        Err(TokenFileError::NotAFile)
    ));
    assert_eq!(
        opens(&inotify),
        0,
        "the device node was opened through a link"
    );
}

#[test]
fn regression_a_fifo_is_never_opened() {
    let r = root();
    let fifo = r.root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let inotify = watch_opens(&fifo);
    assert!(matches!(
        read_in(&r.root, "/fifo"),
        Err(TokenFileError::NotAFile)
    ));
    assert_eq!(opens(&inotify), 0, "the FIFO was opened");
}

#[test]
fn a_regular_file_is_opened_once_to_be_read() {
    let r = root();
    let file = r.root.join("token");
    std::fs::write(&file, "tok").unwrap();
    let inotify = watch_opens(&file);
    assert_eq!(read_ok(&r, "/token"), "tok");
    assert_eq!(opens(&inotify), 1);
}
