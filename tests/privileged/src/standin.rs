//! The stand-in "real IMDS": 169.254.169.254 and `fd00:ec2::254` made local on `lo`, with a server on
//! port 80 serving recognisable host credentials and counting every request it sees.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::sh;

/// What the stand-in answers to every request: a caller that sees this was not redirected.
pub const HOST_MARKER: &str = "HOST-INSTANCE-PROFILE-CREDENTIALS";

/// The local metadata addresses and their server; removed when dropped.
#[derive(Debug)]
pub struct Standin {
    seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// The listeners' threads, joined on drop (the addresses are free again before the lock goes).
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The machine-wide lock on the address, held until drop (`hold_metadata_address`).
    _lock: std::fs::File,
}

fn serve(listener: &TcpListener, seen: &AtomicUsize, stop: &AtomicBool) {
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = HOST_MARKER;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Standin {
    /// Adds the addresses to `lo` and starts serving on both.
    pub fn start() -> Self {
        let lock = metadataproxy_tests::hold_metadata_address();
        // `replace`, not `add`: under the lock, an address still there is a leftover of a killed
        // run (nobody else uses it), and it stays local either way.
        sh("ip addr replace 169.254.169.254/32 dev lo");
        sh("ip -6 addr replace fd00:ec2::254/128 dev lo nodad");
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ["169.254.169.254:80", "[fd00:ec2::254]:80"]
            .into_iter()
            .map(|addr| {
                let addr: SocketAddr = addr.parse().expect("address");
                let listener =
                    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
                std::thread::spawn(move || serve(&listener, &seen, &stop))
            })
            .collect();
        Self {
            seen,
            stop,
            threads,
            _lock: lock,
        }
    }

    /// Requests the stand-in has seen (each one is a connection that was not redirected).
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", "169.254.169.254/32", "dev", "lo"])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["-6", "addr", "del", "fd00:ec2::254/128", "dev", "lo"])
            .status();
    }
}
