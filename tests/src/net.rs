//! Loopback ports, this machine's other addresses, and waiting for a child process to listen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Child;
use std::time::{Duration, Instant};

/// A TCP port free on every address right now (the caller hands it to a server soon after).
///
/// Found by binding the wildcard address: a port free on 127.0.0.1 may still be the local port
/// of a client connection from 127.0.0.2, and then a daemon with `HOST=0.0.0.0` cannot bind it.
pub fn free_port() -> u16 {
    match TcpListener::bind("0.0.0.0:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind 0.0.0.0:0 to find a free port: {e}"),
    }
}

/// A non-loopback IPv4 address of this machine (its first of global scope), if it has one.
///
/// Every loopback source address is one caller to the daemon (any host process may bind any of
/// them), so a test that needs a second caller without the eBPF redirect connects from this one
/// (it reaches a daemon listening on 127.0.0.1 too). `None`, with the reason printed, on a machine
/// with loopback only.
pub fn other_local_ipv4() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok());
    if found.is_none() {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address for a second caller");
    }
    found
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Polls `addr` until it accepts TCP; `Err` says why not (the child exited, or time ran out).
pub async fn wait_listening(
    addr: SocketAddr,
    timeout: Duration,
    child: &mut Child,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!("exited ({status}) before listening on {addr}"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot poll the process: {e}")),
        }
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on {addr} after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
