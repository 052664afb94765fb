//! The real demo: moto as STS/IAM, 169.254.169.254 made local with a stand-in "real IMDS", a private
//! dockerd, the daemon with its eBPF redirect, and containers that each get their own role.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use metadataproxy_tests::{
    ACCOUNT, BpfFs, Daemon, DockerD, HOST_ACCESS_KEY_ID, IMAGE, METADATA_IP, MetadataAddress, Moto,
    free_port,
};

use super::container::{self, Findings, URL};
use super::masked;
use crate::step;

/// The containers: name, `IAM_ROLE`, whether its process speaks IMDSv2, whether it runs on a
/// user-defined bridge network (else Docker's default bridge).
const CONTAINERS: [(&str, Option<&str>, bool, bool); 4] = [
    ("web", Some("web-role"), false, false),
    ("batch", Some("batch-role"), true, false),
    ("reports", Some("batch-role"), false, true),
    ("norole", None, false, false),
];

/// Runs the demo; every guard (containers, dockerd, bridge, lo alias, pins, processes) is dropped
/// before this returns, whether the demo passed, failed or panicked inside the harness.
pub fn run(venv: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let moto_bin = venv.join("bin").join("moto_server");
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(demo(&moto_bin, bin))));
    let summary = match outcome {
        Ok(result) => result?,
        Err(panic) => {
            let why = crate::process::panic_message(&*panic);
            bail!("the demo failed (everything it started was cleaned up): {why}");
        }
    };
    let leftover = std::process::Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{METADATA_IP}/32")));
    println!(
        "cleaned up: containers, dockerd, its bridge and cgroup, the bpffs pins, metadataproxy, \
         moto; 169.254.169.254 on lo: {}",
        if leftover { "STILL PRESENT" } else { "removed" }
    );
    step("summary");
    print!("{summary}");
    ensure!(!leftover, "169.254.169.254/32 is still on lo");
    println!(
        "\ndemo OK (containers part: {:.1} s): every container got exactly its own role through the eBPF redirect; \
         nothing reached the stand-in \"real IMDS\"",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Steps 1 to 6; returns the summary table. Guards are declared so they drop in reverse order.
async fn demo(moto_bin: &Path, bin: &Path) -> Result<String> {
    step("1/6 start moto_server on loopback (stands in for AWS STS and IAM); create two roles");
    let moto = Moto::start_with(moto_bin).await;
    println!("moto is listening at {}", moto.endpoint());
    for role in ["web-role", "batch-role"] {
        println!("created {}", moto.create_role(role, "/").await);
    }

    step(
        "2/6 make 169.254.169.254 local: lo alias + a stand-in \"real IMDS\" serving HOST credentials",
    );
    let metadata = MetadataAddress::start();
    println!(
        "$ ip addr add {METADATA_IP}/32 dev lo; stand-in listening on {} (host key id {HOST_ACCESS_KEY_ID})",
        metadata.standin.addr()
    );

    step(
        "3/6 start a private dockerd (own socket, roots, bridge; --iptables=false) + busybox image",
    );
    let bpffs = BpfFs::mount();
    let mut docker = DockerD::start().context("dockerd cannot run on this machine")?;
    println!(
        "dockerd at {}, bridge gateway {}, containers under cgroup {}",
        docker.url(),
        docker.gateway(),
        docker.cgroup_parent()
    );

    step("4/6 start metadataproxy with the eBPF redirect (EBPF=required)");
    let port = free_port();
    let daemon = Daemon::builder()
        .bin(bin)
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("PORT", port.to_string())
        .env("MOCK_API", "true")
        .env("DOCKER_URL", docker.url())
        .env("EBPF", "required")
        .env("EBPF_CGROUPS", docker.cgroup_parent())
        .env("EBPF_PIN_DIR", bpffs.pin_dir())
        .env("EBPF_ON_EXIT", "detach")
        .start()
        .await;
    println!(
        "connect({METADATA_IP}:80) from cgroup {} -> 169.254.170.45:{port} from container \
         networks (the default target: a link-local address the daemon put on lo, which every \
         container network reaches), 127.0.0.1:{port} from the host's network namespace \
         (host-network containers); pins in {}",
        docker.cgroup_parent(),
        bpffs.pin_dir()
    );

    let mut result = exercise(&mut docker, &moto, &metadata).await;
    if let Ok(summary) = result {
        result = identified_by_cgroup(&daemon, summary).await;
    }
    if result.is_err() {
        println!("\n--- metadataproxy log ---\n{}", daemon.logs());
    }
    step("cleanup: containers, dockerd, bridge, pins, lo alias, processes");
    drop(daemon);
    drop(docker);
    drop(bpffs);
    drop(metadata);
    drop(moto);
    result
}

/// Steps 5 and 6: the containers' own requests, a `docker exec`, and every check.
async fn exercise(docker: &mut DockerD, moto: &Moto, metadata: &MetadataAddress) -> Result<String> {
    step(
        "5/6 run containers; each one's own process calls http://169.254.169.254 with busybox wget",
    );
    let mut summary = String::from(
        "container  request                 role served   AccessKeyId            moto GetCallerIdentity\n",
    );
    let mut web = String::new();
    let (user_net, _) = docker.create_network();
    println!("$ docker network create {user_net}   # a user-defined bridge network");
    for (name, role, v2, on_user_net) in CONTAINERS {
        let env = role.map(|r| format!("IAM_ROLE={r}"));
        let mut args: Vec<&str> = env.iter().flat_map(|e| ["-e", e.as_str()]).collect();
        if on_user_net {
            args.extend(["--network", user_net.as_str()]);
        }
        println!(
            "$ docker run -d --name {name} {}{IMAGE} sh -c '<wget {URL}…>'",
            args.iter().fold(String::new(), |s, a| s + a + " ")
        );
        let id = container::start(docker, name, &args, v2);
        if name == "web" {
            web.clone_from(&id);
        }
        let found = container::findings(docker, &id)?;
        let how = match (v2, on_user_net) {
            (true, _) => "IMDSv2 (token)",
            (false, true) => "IMDSv1, user network",
            (false, false) => "IMDSv1",
        };
        if let Some(len) = found.token_len {
            println!("  [{name}] PUT /latest/api/token -> a {len}-character token");
        }
        let row = check(moto, name, role, &found).await?;
        let _ = writeln!(summary, "{name:<10} {how:<23} {row}");
    }

    step("6/6 docker exec into web, and what the stand-in \"real IMDS\" saw");
    let script = format!(
        "R=$(wget -q -O - {URL}) && echo \"list:0:$R\" && echo \"creds:0:$(wget -q -O - {URL}$R | tr '\\n' ' ')\""
    );
    println!("$ docker exec web sh -c 'wget -q -O - {URL}; …'");
    let (ok, out, err) = docker.exec(&web, &script);
    ensure!(ok, "docker exec into web: {err}");
    let mut found = Findings::default();
    for line in out.lines() {
        if let Some(role) = line.strip_prefix("list:0:") {
            found.listed = true;
            found.listing = role.trim().to_owned();
        } else if let Some(creds) = line.strip_prefix("creds:0:") {
            found.creds = Some(creds.trim().to_owned());
        }
    }
    let row = check(moto, "web/exec", Some("web-role"), &found).await?;
    let _ = writeln!(summary, "{:<10} {:<23} {row}", "web", "docker exec, IMDSv1");
    let _ = writeln!(summary, "{}", bypasses(docker, &web)?);
    let seen = metadata.standin.requests();
    println!(
        "stand-in \"real IMDS\" on {METADATA_IP}:80 saw {} request(s)",
        seen.len()
    );
    let _ = writeln!(
        summary,
        "stand-in \"real IMDS\" on {METADATA_IP}:80 (serving host credentials): {} requests",
        seen.len()
    );
    ensure!(
        seen.is_empty(),
        "the stand-in real IMDS was reached: {seen:?}"
    );
    Ok(summary)
}

/// The ways around `connect(169.254.169.254:80)` from the web container: the IPv4-mapped IPv6
/// spelling is redirected like the address itself; ping is dropped by the egress guard.
fn bypasses(docker: &DockerD, web: &str) -> Result<String> {
    let mapped =
        format!("http://[::ffff:{METADATA_IP}]/latest/meta-data/iam/security-credentials/");
    println!("$ docker exec web wget -q -O - {mapped}");
    let (ok, out, err) = docker.exec(web, &format!("wget -q -O - {mapped}"));
    println!("  [web] -> {}", if ok { out.trim() } else { err.trim() });
    ensure!(
        ok && out.trim() == "web-role",
        "the IPv4-mapped spelling was not served by the daemon: {out} {err}"
    );
    println!("$ docker exec web ping -c1 -W1 {METADATA_IP}");
    let (ok, out, err) = docker.exec(web, &format!("ping -c1 -W1 {METADATA_IP}"));
    let said = err
        .lines()
        .chain(out.lines())
        .find(|l| !l.trim().is_empty());
    println!("  [web] -> {}", said.unwrap_or("(nothing)").trim());
    ensure!(!ok, "ping from a container reached the metadata address");
    Ok(format!(
        "bypass attempts from web: wget http://[::ffff:{METADATA_IP}]/… -> web-role (redirected); ping {METADATA_IP} -> dropped by the egress guard"
    ))
}

/// Checks the daemon knew every caller by its cgroup (the redirect), never by its address.
async fn identified_by_cgroup(daemon: &Daemon, mut summary: String) -> Result<String> {
    let logs = daemon.wait_for_log("source=\"docker_cgroup\"").await;
    let by_cgroup = logs.matches("source=\"docker_cgroup\"").count();
    let by_ip = logs.matches("source=\"docker_ip\"").count();
    let line = format!(
        "metadataproxy audit log: {by_cgroup} line(s) with source=docker_cgroup (known by eBPF cgroup), {by_ip} with source=docker_ip"
    );
    println!("{line}");
    ensure!(by_cgroup > 0 && by_ip == 0, "{line}");
    let _ = writeln!(summary, "{line}");
    Ok(summary)
}

/// Prints what container `name` got and checks it against its `role` with moto; returns its row.
async fn check(moto: &Moto, name: &str, role: Option<&str>, found: &Findings) -> Result<String> {
    let all = format!("{} {}", found.listing, found.creds.as_deref().unwrap_or(""));
    ensure!(
        !all.contains(HOST_ACCESS_KEY_ID),
        "HOST credentials reached {name}: {all}"
    );
    println!(
        "  [{name}] GET {URL} -> {}",
        if found.listed { "200" } else { "error" }
    );
    println!("  [{name}]   {}", found.listing);
    let Some(role) = role else {
        ensure!(
            !found.listed && found.listing.contains("404"),
            "{name} has no role and should get 404, got {:?}",
            found.listing
        );
        return Ok(format!("{:<13} {:<22} {}", "none (404)", "-", "-"));
    };
    ensure!(
        found.listed && found.listing == role,
        "{name} should list {role}, got {:?}",
        found.listing
    );
    let body = found
        .creds
        .as_deref()
        .ok_or_else(|| anyhow!("{name}: no credentials"))?;
    println!("  [{name}] GET {URL}{role} -> 200");
    println!("  [{name}]   {}", masked(body)?);
    let doc: serde_json::Value = serde_json::from_str(body)?;
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let key = text("AccessKeyId");
    let arn = moto
        .caller_identity_arn(&key, &text("SecretAccessKey"), &text("Token"))
        .await;
    println!("  [{name}] moto sts get-caller-identity with these credentials -> {arn}");
    let wanted = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/");
    ensure!(
        arn.starts_with(&wanted),
        "{name}: moto says {arn}, expected {wanted}…"
    );
    Ok(format!("{role:<13} {key:<22} {arn}"))
}
