//! A bridge on the host and network namespaces attached to it by veth pairs.

use std::process::Command;

use crate::sh;

/// A bridge `<name>` with address `10.213.0.1/24`: the namespaces' default gateway, the host.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
}

/// The bridge's address: reachable from the namespaces and local on the host.
pub const GATEWAY: &str = "10.213.0.1";

impl Bridge {
    /// Creates and brings up the bridge.
    pub fn new() -> Self {
        let name = format!("mpbr{}", std::process::id() % 100_000);
        sh(&format!(
            "ip link add {name} type bridge && ip addr add {GATEWAY}/24 dev {name} && ip link set {name} up"
        ));
        Self { name }
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// A network namespace with `10.213.0.<n>/24` on a veth whose peer is on the bridge.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    host_end: String,
}

impl Netns {
    /// Creates namespace number `n` (2..=254) attached to `bridge`.
    pub fn new(bridge: &Bridge, n: u8) -> Self {
        let id = std::process::id() % 100_000;
        let name = format!("mp-{id}-{n}");
        let host_end = format!("mpv{id}h{n}");
        let ns_end = format!("mpv{id}n{n}");
        sh(&format!(
            "ip netns add {name} && \
             ip link add {host_end} type veth peer name {ns_end} && \
             ip link set {host_end} master {br} up && \
             ip link set {ns_end} netns {name} && \
             ip -n {name} addr add 10.213.0.{n}/24 dev {ns_end} && \
             ip -n {name} link set {ns_end} up && ip -n {name} link set lo up && \
             ip -n {name} route add default via {GATEWAY}",
            br = bridge.name
        ));
        Self { name, host_end }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
