//! An EC2 node in three network namespaces, so the forwarding path to the real IMDS is tested
//! without touching this machine's routing: `host` (where the daemon runs, as on a node),
//! `uplink` (the stand-in "real IMDS": 169.254.169.254 and `fd00:ec2::254` on its interface,
//! reached from `host` through a route, as on EC2 — not local to the host, so the host's policy
//! routing applies to what it forwards there) and `container` (a bridge container's namespace,
//! its default routes via `host`). No namespace has a route out of the three: nothing leaves the
//! machine. Everything goes with the namespaces when dropped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sh;

/// The port the stand-in counts UDP datagrams on (in the uplink namespace: any port is free).
pub const UDP_PORT: u16 = 4242;
/// The host's side of the container's link: the container's gateway, whose MAC frames go to.
pub const HOST_MAC: &str = "02:00:00:6d:70:01";

/// The stand-in: HTTP on port 80 (the host's credentials marker) and UDP on [`UDP_PORT`] of both
/// metadata addresses, printing one line per request or datagram (`tcp4 …`, `udp6 <payload>`).
const STANDIN: &str = r"
import socket, sys, threading
MARKER = sys.argv[1]
def http(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 80))
    s.listen(64)
    tag = 'tcp4' if family == socket.AF_INET else 'tcp6'
    while True:
        c, peer = s.accept()
        c.settimeout(2)
        try:
            c.recv(4096)
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(MARKER), MARKER.encode()))
        except OSError:
            pass
        c.close()
        print(tag, peer[0], flush=True)
def udp(family, addr, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    tag = 'udp4' if family == socket.AF_INET else 'udp6'
    while True:
        data, peer = s.recvfrom(2048)
        print(tag, data.decode(errors='replace'), flush=True)
for f, a in [(socket.AF_INET, '169.254.169.254'), (socket.AF_INET6, 'fd00:ec2::254')]:
    threading.Thread(target=http, args=(f, a), daemon=True).start()
    threading.Thread(target=udp, args=(f, a, int(sys.argv[2])), daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
";

/// Network namespaces, deleted when dropped (with their interfaces, routes and rules).
#[derive(Debug)]
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The three namespaces and the stand-in serving in `uplink`.
#[derive(Debug)]
pub struct Site {
    /// Where the daemon runs.
    pub host: String,
    /// Where the stand-in "real IMDS" is.
    pub uplink: String,
    /// A bridge container's network namespace.
    pub container: String,
    standin: Child,
    /// What the stand-in printed, so far.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Dropped after the stand-in is killed (see `Drop`).
    _namespaces: Namespaces,
}

impl Site {
    /// Builds the namespaces, their links and routes, and starts the stand-in.
    pub fn new() -> Self {
        let id = std::process::id();
        let (host, uplink, container) = (
            format!("mpsite-{id}-h"),
            format!("mpsite-{id}-u"),
            format!("mpsite-{id}-c"),
        );
        let mut namespaces = Namespaces(Vec::new());
        for ns in [&host, &uplink, &container] {
            sh(&format!("ip netns add {ns}"));
            namespaces.0.push(ns.clone());
            sh(&format!("ip -n {ns} link set lo up"));
        }
        let (h, u, c) = (&host, &uplink, &container);
        sh(&format!(
            "ip -n {h} link add hu type veth peer name uh netns {u} && \
             ip -n {h} link add hc address {HOST_MAC} type veth peer name ch netns {c} && \
             ip -n {h} addr add 10.99.1.1/24 dev hu && ip -n {h} addr add fd99:1::1/64 dev hu nodad && \
             ip -n {h} addr add 10.99.2.1/24 dev hc && ip -n {h} addr add fd99:2::1/64 dev hc nodad && \
             ip -n {u} addr add 10.99.1.2/24 dev uh && ip -n {u} addr add fd99:1::2/64 dev uh nodad && \
             ip -n {u} addr add 169.254.169.254/32 dev uh && ip -n {u} addr add fd00:ec2::254/128 dev uh nodad && \
             ip -n {c} addr add 10.99.2.2/24 dev ch && ip -n {c} addr add fd99:2::2/64 dev ch nodad && \
             ip -n {h} link set hu up && ip -n {h} link set hc up && \
             ip -n {u} link set uh up && ip -n {c} link set ch up && \
             ip -n {h} route add 169.254.169.254/32 via 10.99.1.2 && \
             ip -n {h} -6 route add fd00:ec2::254/128 via fd99:1::2 && \
             ip -n {u} route add 10.99.2.0/24 via 10.99.1.1 && \
             ip -n {u} -6 route add fd99:2::/64 via fd99:1::1 && \
             ip -n {c} route add default via 10.99.2.1 && \
             ip -n {c} -6 route add default via fd99:2::1 && \
             ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        ));
        let mut standin = Command::new("ip")
            .args(["netns", "exec", u, "python3", "-u", "-c", STANDIN])
            .args([crate::HOST_MARKER, &UDP_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the stand-in");
        let stdout = standin.stdout.take().expect("stand-in stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let site = Self {
            host,
            uplink,
            container,
            standin,
            lines,
            _namespaces: namespaces,
        };
        assert!(
            site.wait_for(|l| l == "ready", Duration::from_secs(10)),
            "the stand-in did not start"
        );
        site
    }

    /// Whether the stand-in printed a line `matches` accepts within `timeout`.
    pub fn wait_for(&self, matches: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines.lock().expect("lines").iter().any(|l| matches(l)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the stand-in printed so far.
    pub fn seen(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// `ip [-6] rule show` in the host namespace.
    pub fn rules(&self, v6: bool) -> String {
        let family = if v6 { "-6" } else { "-4" };
        sh(&format!("ip -n {} {family} rule show", self.host))
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.standin.kill();
        let _ = self.standin.wait();
    }
}
