//! The daemon's own namespaces as the eBPF programs name them: its network namespace's cookie
//! (records of callers in other namespaces are told apart by it) and its pid namespace (the
//! programs recognise the daemon's process by its tgid in that namespace).
#![expect(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper in std or nix"
)]

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;

/// The cookie of the network namespace of the calling process (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn own_netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
    // SAFETY: a valid socket, an 8-byte buffer and its length, as SO_NETNS_COOKIE wants.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling process's pid namespace.
pub const OWN_PIDNS: &str = "/proc/self/ns/pid";

/// `(device, inode)` of the calling process's pid namespace ([`OWN_PIDNS`]).
pub fn own_pidns() -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(OWN_PIDNS)?;
    Ok((meta.dev(), meta.ino()))
}
