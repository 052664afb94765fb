//! Where the daemon listens: its own address, and every redirect target that listener does not
//! already cover (an IPv4-mapped target arrives over IPv4; a `[::]` listener takes IPv4 too where
//! `net.ipv6.bindv6only` is 0).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::EbpfConfig;

/// An address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A listener on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The address a connection to `addr` arrives at: an IPv4-mapped IPv6 target is reached over
/// IPv4 (the socket that connects there talks IPv4).
fn arrives_at(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |ip| SocketAddr::from((ip, v6.port()))),
        SocketAddr::V4(_) => addr,
    }
}

/// Whether a listener on `listen` also accepts connections to `addr`; `dual_stack`: a listener
/// on `[::]` accepts IPv4 too (`net.ipv6.bindv6only` = 0, Linux's default).
fn covers(listen: SocketAddr, addr: SocketAddr, dual_stack: bool) -> bool {
    let addr = arrives_at(addr);
    listen.port() == addr.port()
        && (listen.ip() == addr.ip()
            || listen.ip().is_unspecified()
                && (listen.is_ipv6() == addr.is_ipv6() || listen.is_ipv6() && dual_stack))
}

/// Whether a listener on `[::]` also accepts IPv4 here (`net.ipv6.bindv6only` is 0).
pub fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "0")
}

/// The redirect targets a listener on `listen` does not cover: the daemon listens there too.
pub fn targets_to_bind(listen: SocketAddr, ebpf: &EbpfConfig, dual_stack: bool) -> Vec<SocketAddr> {
    let mut extra: Vec<SocketAddr> = Vec::new();
    let targets =
        std::iter::once(SocketAddr::V4(ebpf.target4)).chain(ebpf.target6.map(SocketAddr::V6));
    for target in targets.map(arrives_at) {
        let covered = covers(listen, target, dual_stack)
            || extra.iter().any(|e| covers(*e, target, dual_stack));
        if !covered {
            extra.push(target);
        }
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
