//! `metadataproxy doctor` on this machine: every check passes with a private bpffs, a real
//! dockerd and moto as STS; each missing piece (a pin path off bpffs, a dead Docker socket, a
//! dead STS endpoint, an invalid setting) gives its precise message and a failing exit status.

use std::process::{Command, Stdio};

use metadataproxy_tests::{BpfFs, DockerD, Moto, NOWHERE, effective_uid, path_var, required_path};

/// Runs `metadataproxy doctor` with exactly these variables (and the harmless AWS ones):
/// (exit code, stdout).
fn doctor(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let bin = required_path("METADATAPROXY_BIN");
    let out = Command::new(&bin)
        .arg("doctor")
        .env_clear()
        .env("PATH", path_var())
        .envs([
            ("AWS_ACCESS_KEY_ID", "AKIADOCTORTEST9876"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ])
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

/// Why the host checks cannot pass here, if they cannot (then the test says so and stops).
fn unable() -> Option<String> {
    if effective_uid() != "0" {
        return Some(format!("not root (uid {})", effective_uid()));
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_present_passes() {
    if let Some(why) = unable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let Some(docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    let bpffs = BpfFs::mount();
    let pins = bpffs.pin_dir();
    let (code, report) = doctor(&[
        ("EBPF_PIN_DIR", pins.as_str()),
        ("DOCKER_URL", docker.url().as_str()),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint().as_str()),
    ]);
    assert_eq!(code, Some(0), "{report}");
    for (name, start) in [
        ("configuration", "valid (EBPF=required, DOCKER_URL="),
        ("kernel BTF", "/sys/kernel/btf/vmlinux present"),
        ("kernel version", "Linux "),
        ("cgroup v2", "mounted at /"),
        (
            "bpffs",
            &format!("EBPF_PIN_DIR {pins} is on a bpffs (nothing pinned yet)"),
        ),
        ("capabilities", "effective 0x"),
        // The default target; whether its address is on lo depends on earlier daemons.
        (
            "redirect target",
            "169.254.170.45:45001 (IPv6 callers: [::ffff:169.254.170.45]:45001); 169.254.170.45 is ",
        ),
        // In place when an earlier daemon ran on this machine, else to be added at start.
        ("forwarding rules", ""),
        ("docker", "Docker "),
        ("aws credentials", "access key id …9876"),
        (
            "sts",
            &format!("{} answers; the daemon is arn:aws:", moto.endpoint()),
        ),
    ] {
        let l = line(&report, name);
        assert!(l.starts_with("ok    "), "{l}");
        assert!(
            l[23..].starts_with(start),
            "{name}: {l:?} does not start with {start:?}"
        );
    }
    assert!(report.ends_with("all checks passed\n"), "{report}");
    assert!(!report.contains("testing"), "no secret in the report");
}

#[tokio::test]
async fn missing_pieces_fail_with_their_fix() {
    let not_bpffs = tempfile::tempdir().expect("temp dir");
    let pins = not_bpffs.path().join("pins");
    let pins = pins.to_str().unwrap_or_default();
    let dead_socket = not_bpffs.path().join("docker.sock");
    let docker_url = format!("unix://{}", dead_socket.display());
    let (code, report) = doctor(&[
        ("EBPF_PIN_DIR", pins),
        ("DOCKER_URL", docker_url.as_str()),
        ("AWS_ENDPOINT_URL_STS", NOWHERE),
    ]);
    assert_eq!(code, Some(1), "{report}");
    let bpffs = line(&report, "bpffs");
    assert!(
        bpffs.starts_with(&format!(
            "FAIL  bpffs            EBPF_PIN_DIR {pins} is not on a bpffs (it is on "
        )),
        "{report}"
    );
    assert!(report.contains(
        "fix: mount one (`mount -t bpf bpf /sys/fs/bpf`), or set EBPF_PIN_DIR to a directory on a bpffs"
    ));
    assert_eq!(
        line(&report, "docker"),
        format!(
            "FAIL  docker           Docker at {docker_url}: cannot connect: Socket not found: {}",
            dead_socket.display()
        )
    );
    assert!(report.contains("fix: start dockerd, or set DOCKER_URL to where it listens"));
    assert!(
        line(&report, "sts").starts_with(&format!(
            "FAIL  sts              {NOWHERE}: sts:GetCallerIdentity failed (Unavailable): dispatch failure"
        )),
        "{report}"
    );
    // The credentials themselves are there: only STS is unreachable.
    assert!(
        line(&report, "aws credentials").starts_with("ok    "),
        "{report}"
    );
    assert!(report.ends_with("3 failed, 0 warnings\n"), "{report}");
}

#[tokio::test]
async fn an_invalid_setting_fails_and_skips_what_depends_on_it() {
    let (code, report) = doctor(&[("PORT", "abc"), ("EBPF_PIN_DIR", "/tmp")]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.starts_with(
            "FAIL  configuration    invalid configuration:\n  PORT=\"abc\": not a port number (0 to 65535)\n"
        ),
        "{report}"
    );
    for name in ["bpffs", "docker", "aws credentials", "sts"] {
        let l = line(&report, name);
        assert!(
            l.starts_with("warn  ") && l.ends_with("not checked: the configuration is invalid"),
            "{l}"
        );
    }
}

#[tokio::test]
async fn a_broken_role_policy_is_reported_where_it_breaks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, "{\"version\": 1, \"rules\": [{\"match\": {}}]}")
        .expect("write the policy");
    let path = policy.display().to_string();
    let vars = [
        ("EBPF", "off"),
        ("DOCKER_URL", "off"),
        ("ROLE_POLICY_FILE", path.as_str()),
        ("AWS_ENDPOINT_URL_STS", NOWHERE),
    ];
    let (code, report) = doctor(&vars);
    assert_ne!(code, Some(0), "{report}");
    let found = line(&report, "role policy");
    assert!(
        found.starts_with("FAIL")
            && found.contains(&format!("role policy file `{path}` has invalid rules"))
            && found.contains("rule `rules[0]` neither allows nor denies a role"),
        "{report}"
    );
    std::fs::write(
        &policy,
        r#"{"version": 1, "rules": [{"match": {}, "allow": ["*"]}]}"#,
    )
    .expect("write the policy");
    let (_, report) = doctor(&vars);
    let found = line(&report, "role policy");
    assert!(
        found.starts_with("ok") && found.ends_with("1 rules"),
        "{report}"
    );
}

#[tokio::test]
async fn ebpf_off_needs_no_kernel_features() {
    let (code, report) = doctor(&[
        ("EBPF", "off"),
        ("DOCKER_URL", "unix:///nonexistent/docker.sock"),
        ("AWS_ENDPOINT_URL_STS", NOWHERE),
    ]);
    assert_eq!(code, Some(1), "Docker and STS still fail: {report}");
    for name in [
        "kernel BTF",
        "kernel version",
        "cgroup v2",
        "bpffs",
        "capabilities",
    ] {
        assert_eq!(
            line(&report, name),
            format!("ok    {name:<16} not needed (EBPF=off)")
        );
    }
    assert_eq!(
        line(&report, "redirect target"),
        "ok    redirect target  not used (EBPF=off)"
    );
    assert_eq!(
        line(&report, "forwarding rules"),
        "ok    forwarding rules not used (EBPF=off)"
    );
}
