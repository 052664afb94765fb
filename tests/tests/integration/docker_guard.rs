//! Issue 11 from a real container, with the daemon run the way the README says (default redirect
//! target): a bridge container's `wget http://[::ffff:169.254.169.254]/…` gets its own role
//! through the daemon (item 1); its ping and UDP datagram to 169.254.169.254 get nothing while
//! its redirected `wget` still works, and `/metrics` counts the drops (item 3); bridge,
//! user-defined-bridge and host-network containers are all served (item 4, in `docker_ebpf.rs`
//! too). 169.254.169.254 is local with a stand-in "real IMDS" that must see nothing.
//!
//! Needs root, a real dockerd, and the daemon built with the eBPF object.

use std::net::UdpSocket;
use std::time::Duration;

use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, Daemon, DockerD, HOST_ACCESS_KEY_ID, METADATA_IP, MetadataAddress,
    Moto, free_port, loopback,
};

/// `wget -q -O - url` inside container `id`: (ok, body or error).
fn wget(docker: &DockerD, id: &str, url: &str) -> (bool, String) {
    let (ok, out, err) = docker.exec(id, &format!("wget -q -O - '{url}'"));
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {id} at {url}: {out}"
    );
    (ok, if ok { out } else { format!("{out}{err}") })
}

/// The value of the sample `name` in a metrics text (0 when absent).
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn metrics(admin: std::net::SocketAddr) -> String {
    let url = format!("http://{admin}/metrics");
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_bridge_container_mapped_ipv6_is_served_and_ping_and_udp_get_nothing() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-u", "role-h"] {
        moto.create_role(role, "/").await;
    }
    let admin = loopback(free_port());
    let mut daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .redirecting_docker(&docker, &bpffs)
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    let bridge = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let (net, _) = docker.create_network();
    let user_net = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=role-u"]);
    let host_net = docker.run_detached(&["--network", "host", "-e", "IAM_ROLE=role-h"]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    // Every kind of container network reaches the default target, over IPv4 and IPv4-mapped IPv6.
    let mapped = format!("http://[::ffff:{METADATA_IP}]{CREDS_PATH}");
    let plain = format!("http://{METADATA_IP}{CREDS_PATH}");
    for (id, role, what) in [
        (&bridge, "role-a", "default bridge"),
        (&user_net, "role-u", "user-defined bridge"),
        (&host_net, "role-h", "host network"),
    ] {
        for url in [&plain, &mapped] {
            let (ok, body) = wget(&docker, id, url);
            assert!(
                ok && body == role,
                "{what}, {url}: {body}\n{}",
                daemon.logs()
            );
        }
    }
    let (ok, body) = wget(&docker, &bridge, &format!("{mapped}role-a"));
    assert!(ok, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("credentials JSON");
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let arn = moto
        .caller_identity_arn(
            &text("AccessKeyId"),
            &text("SecretAccessKey"),
            &text("Token"),
        )
        .await;
    assert_eq!(
        arn,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/role-a/devproxyauth")
    );

    // Around connect(): ICMP echo (Docker grants CAP_NET_RAW) and a UDP datagram (TFTP).
    let udp = UdpSocket::bind((METADATA_IP, 0)).expect("UDP receiver on the metadata address");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let port = udp.local_addr().expect("port").port();
    for id in [&bridge, &user_net] {
        let (ok, out, err) = docker.exec(id, &format!("ping -c1 -W1 {METADATA_IP}"));
        assert!(
            !ok,
            "ICMP echo from container {id} was answered: {out}{err}"
        );
        let _ = docker.exec(
            id,
            &format!("timeout 2 tftp -g -r x -l /tmp/x {METADATA_IP} {port}"),
        );
        let mut buf = [0u8; 64];
        assert!(
            udp.recv_from(&mut buf).is_err(),
            "a UDP datagram from container {id} reached the metadata address"
        );
    }
    let (ok, body) = wget(&docker, &bridge, &plain);
    assert!(ok && body == "role-a", "the redirect still works: {body}");

    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(admin);
        if sample(
            &text,
            "metadataproxy_ebpf_egress_drops_total{family=\"ipv4\"}",
        ) >= 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drops = sample(
        &text,
        "metadataproxy_ebpf_egress_drops_total{family=\"ipv4\"}",
    );
    assert!(drops >= 4, "IPv4 drops counted: {drops}\n{text}");
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}
