//! eBPF programs of metadataproxy: redirect connections to the metadata service and record who made them.
//!
//! - `cgroup/connect4` and `cgroup/connect6`: a TCP connect to 169.254.169.254:80 (or
//!   `[fd00:ec2::254]:80`) from anyone but the daemon gets its destination rewritten to the daemon,
//!   and {cgroup id, pid/tgid, netns cookie} is saved under the socket's cookie;
//! - `sock_ops` on `TCP_CONNECT_CB` (before the SYN, once the source port exists): the record moves
//!   to a map keyed by the connection's 4-tuple, which the daemon reads at `accept()`.
//!
//! Every entry point is a thin wrapper over a fallible `try_…` function; a failure never blocks the
//! connection (the daemon then identifies the caller by its address alone).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![expect(
    unsafe_code,
    reason = "eBPF helpers and context fields are raw pointers into kernel memory"
)]

mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// On the host the crate is an empty binary, so `cargo clippy --workspace` can check it.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
