//! Isolation under load: 50 real containers (default; `ISOLATION_LOAD_CONTAINERS`), each with its
//! own `IAM_ROLE`, call `http://169.254.169.254` through the eBPF redirect at once, alternating
//! IMDSv1 and IMDSv2 with busybox `wget`, for 60 s (default; `ISOLATION_LOAD_SECS`). Every answer
//! is checked: the listing is the container's own role, and every distinct key served is asked of
//! moto (`GetCallerIdentity` → `assumed-role/<that container's role>/…`). Zero credentials of
//! another container, zero host credentials (the stand-in "real IMDS" must see no request).
//!
//! Needs root, a real dockerd and the daemon built with the eBPF object.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, BpfFs, Daemon, DockerD, HOST_ACCESS_KEY_ID, IMAGE, METADATA_IP, MetadataAddress, Moto,
};

/// A number from the environment, or `default`.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

/// The loop each container runs: wait for `/sig/go`, then for `secs` seconds list the role and
/// fetch its credentials, odd rounds IMDSv1 and even rounds IMDSv2 (one token, from a raw `PUT`
/// through busybox `nc`); one line per round on stdout: `OK <v> <role> <json>` or `ERR <v> <what>`.
/// Every request gives up after 10 s (`timeout`: busybox 1.35's own `wget -T` crashes), so one that
/// is never answered is an `ERR` line saying how long it took, not a container that outlives the
/// test's deadline.
fn script(secs: u64) -> String {
    format!(
        r#"while [ ! -e /sig/go ]; do usleep 100000; done
M=http://{METADATA_IP}/latest/meta-data/iam/security-credentials/
tok() {{ (printf 'PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n'; sleep 1) | nc -w 10 {METADATA_IP} 80 | sed '1,/^\r$/d'; }}
T=$(tok)
end=$(( $(date +%s) + {secs} ))
i=0
while [ "$(date +%s)" -lt "$end" ]; do
  i=$((i+1))
  if [ $((i % 2)) = 0 ]; then v=v2; H="X-aws-ec2-metadata-token: $T"; else v=v1; H="X-Round: $i"; fi
  s=$(date +%s)
  if ! R=$(timeout 10 wget -q -O - --header "$H" "$M" 2>&1); then echo "ERR $v list after $(( $(date +%s) - s )) s: $R" | tr -d '\n'; echo; T=$(tok); continue; fi
  if ! B=$(timeout 10 wget -q -O - --header "$H" "$M$R" 2>&1); then echo "ERR $v creds after $(( $(date +%s) - s )) s: $B" | tr -d '\n'; echo; continue; fi
  echo "OK $v $R $B" | tr -d '\n'; echo
  usleep 20000
done
echo DONE
"#
    )
}

/// What one container's output added up to.
#[derive(Debug, Default)]
struct Tally {
    v1: usize,
    v2: usize,
    errors: Vec<String>,
}

/// Checks one container's output: every listing is `role`, every body a credentials document
/// (never the host's); distinct keys go into `keys` (key → (role, secret, token)).
fn check_output(
    role: &str,
    output: &str,
    keys: &mut BTreeMap<String, (String, String, String)>,
) -> Tally {
    let mut tally = Tally::default();
    assert!(
        output.lines().last() == Some("DONE"),
        "{role}: the loop did not finish:\n{}",
        output.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    for line in output.lines().filter(|l| !l.is_empty() && *l != "DONE") {
        assert!(
            !line.contains(HOST_ACCESS_KEY_ID),
            "{role}: host credentials: {line}"
        );
        let mut parts = line.splitn(4, ' ');
        let (status, version) = (parts.next(), parts.next());
        if status == Some("ERR") {
            tally.errors.push(line.to_owned());
            continue;
        }
        assert_eq!(status, Some("OK"), "{role}: unexpected line {line:?}");
        let listed = parts.next().unwrap_or_default();
        assert_eq!(listed, role, "{role}: listed another role: {line}");
        let body = parts.next().unwrap_or_default();
        let doc: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{role}: not JSON ({e}): {line}"));
        assert_eq!(doc["Code"], "Success", "{role}: {line}");
        let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
        let entry = (role.to_owned(), text("SecretAccessKey"), text("Token"));
        if let Some(before) = keys.insert(text("AccessKeyId"), entry) {
            assert_eq!(
                before.0, role,
                "one key served to a {} container and a {role} container",
                before.0
            );
        }
        match version {
            Some("v1") => tally.v1 += 1,
            _ => tally.v2 += 1,
        }
    }
    tally
}

/// Starts one container per role running `script` with `mount`, ten `docker run`s at a time;
/// returns their ids in the order of `roles`.
fn start_containers(docker: &DockerD, roles: &[String], mount: &str, script: &str) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = roles
            .chunks(10)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|role| {
                            docker.must(&[
                                "run",
                                "-d",
                                "-v",
                                mount,
                                "-e",
                                &format!("IAM_ROLE={role}"),
                                IMAGE,
                                "sh",
                                "-c",
                                script,
                            ])
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("docker run thread"))
            .collect()
    })
}

/// What each container in `running` is doing: its processes and its last output lines.
fn stuck(docker: &DockerD, ids: &[String], roles: &[String], running: &str) -> String {
    ids.iter()
        .zip(roles)
        .filter(|(id, _)| running.lines().any(|r| r.starts_with(id.as_str())))
        .map(|(id, role)| {
            let top = docker.command(&["top", id]).output().expect("docker top");
            let logs = docker.command(&["logs", id]).output().expect("docker logs");
            format!(
                "{role} ({}):\n{}{}",
                &id[..12.min(id.len())],
                String::from_utf8_lossy(&top.stdout),
                last_lines(&String::from_utf8_lossy(&logs.stdout), 3)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The daemon following `docker`, with the eBPF redirect on its containers' cgroup parent.
async fn start_daemon(docker: &DockerD, moto: &Moto, bpffs: &BpfFs) -> Daemon {
    Daemon::builder()
        .moto(moto)
        .default_account()
        .redirecting_docker(docker, bpffs)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_under_load_only_ever_get_their_own_roles() {
    let containers = setting("ISOLATION_LOAD_CONTAINERS", 50);
    let secs = setting("ISOLATION_LOAD_SECS", 60);
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    let roles: Vec<String> = (0..containers).map(|i| format!("iso-{i:03}")).collect();
    for role in &roles {
        moto.create_role(role, "/").await;
    }
    let mut daemon = start_daemon(&docker, &moto, &bpffs).await;

    let signal = tempfile::tempdir().expect("signal dir");
    let mount = format!("{}:/sig:ro", signal.path().display());
    let script = script(secs);
    let started = Instant::now();
    let ids = start_containers(&docker, &roles, &mount, &script);
    let setup = started.elapsed();
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());
    std::fs::write(signal.path().join("go"), "").expect("go signal");
    let load = Instant::now();
    let deadline = load + Duration::from_secs(secs + 120);
    loop {
        let running = docker.must(&["ps", "-q", "--no-trunc", "--filter", "status=running"]);
        if running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers still running {secs} s + 120 s after the start:\n{}\n\
             --- the daemon's last log lines ---\n{}",
            stuck(&docker, &ids, &roles, &running),
            last_lines(&daemon.logs(), 80)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let load = load.elapsed();

    let mut keys = BTreeMap::new();
    let (mut v1, mut v2, mut errors) = (0, 0, Vec::new());
    for (id, role) in ids.iter().zip(&roles) {
        let out = docker.command(&["logs", id]).output().expect("docker logs");
        let tally = check_output(role, &String::from_utf8_lossy(&out.stdout), &mut keys);
        assert!(
            tally.v1 > 0 && tally.v2 > 0,
            "{role}: v1 {} v2 {} answers; errors {:?}",
            tally.v1,
            tally.v2,
            &tally.errors[..tally.errors.len().min(3)]
        );
        v1 += tally.v1;
        v2 += tally.v2;
        errors.extend(tally.errors.into_iter().map(|e| format!("{role}: {e}")));
    }
    let mut roles_seen = BTreeSet::new();
    for (key, (role, secret, token)) in &keys {
        let arn = moto.caller_identity_arn(key, secret, token).await;
        assert!(
            arn.starts_with(&format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/")),
            "a key served to the {role} container is {arn}"
        );
        roles_seen.insert(role.clone());
    }
    assert_eq!(roles_seen.len(), roles.len(), "some containers got no key");
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
    assert!(
        errors.is_empty(),
        "{} failed requests, e.g. {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        daemon.logs()
    );
    eprintln!(
        "{containers} containers for {load:?} (set-up {setup:?}): {} answers checked ({v1} IMDSv1, \
         {v2} IMDSv2; each a listing and a credentials document), {} distinct keys each confirmed \
         by moto as its own container's role; 0 of another container, 0 host credentials, \
         stand-in IMDS saw 0 requests, 0 errors",
        v1 + v2,
        keys.len()
    );
}
