//! Which redirect targets the daemon listens on besides its listener; and (`docker_wiring`) the
//! daemon as `build` wires it with a fake Docker.

use super::*;

fn ebpf(env: &[(&str, &str)]) -> crate::config::EbpfConfig {
    let env: std::collections::HashMap<&str, &str> = env.iter().copied().collect();
    Config::load(["metadataproxy"], &env).expect("valid").ebpf
}

fn addrs(list: &[&str]) -> Vec<std::net::SocketAddr> {
    list.iter().map(|a| a.parse().expect("addr")).collect()
}

#[test]
fn the_daemon_listens_on_every_target_its_listener_does_not_cover() {
    let default = ebpf(&[("PORT", "45001")]);
    let any4: std::net::SocketAddr = "0.0.0.0:45001".parse().unwrap();
    assert!(
        targets_to_bind(any4, &default, true).is_empty(),
        "0.0.0.0 covers the link address, and the mapped IPv6 target arrives over IPv4"
    );
    let lo: std::net::SocketAddr = "127.0.0.1:45001".parse().unwrap();
    assert_eq!(
        targets_to_bind(lo, &default, true),
        addrs(&["169.254.170.45:45001"]),
        "one extra listener serves both targets"
    );
    let any6: std::net::SocketAddr = "[::]:45001".parse().unwrap();
    assert!(targets_to_bind(any6, &default, true).is_empty());
    assert_eq!(
        targets_to_bind(any6, &default, false),
        addrs(&["169.254.170.45:45001"]),
        "an IPv6-only [::] listener does not take IPv4"
    );
    let own6 = ebpf(&[("PORT", "45001"), ("EBPF_TARGET6", "[::1]:45001")]);
    assert_eq!(targets_to_bind(any4, &own6, true), addrs(&["[::1]:45001"]));
    let other_port = ebpf(&[
        ("PORT", "45001"),
        ("EBPF_TARGET", "169.254.170.45:45009"),
        ("EBPF_TARGET6", "off"),
    ]);
    assert_eq!(
        targets_to_bind(any4, &other_port, true),
        addrs(&["169.254.170.45:45009"])
    );
}

#[path = "app_wiring_tests.rs"]
mod docker_wiring;
