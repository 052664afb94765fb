//! eBPF programs of metadataproxy: redirect connections to the metadata service, record who made
//! them, and drop every other packet addressed to it.
//!
//! - `cgroup/connect4` and `cgroup/connect6` ([`connect`]): a TCP connect to 169.254.169.254:80
//!   (or `[fd00:ec2::254]:80`, or `[::ffff:169.254.169.254]:80`) from anyone but the daemon gets
//!   its destination rewritten to the daemon, and {cgroup id, pid/tgid, netns cookie} is saved in
//!   the socket's storage; any other connect to a guarded address is refused (`EPERM`); each in
//!   two variants (`_pidns`), for a daemon in the host's pid namespace or in one of its own;
//! - `sock_ops` ([`sock_ops`]) on `TCP_CONNECT_CB` (before the SYN, once the source port exists):
//!   the record moves to a map keyed by the connection's 4-tuple, which the daemon reads at
//!   `accept()`; on the move to `TCP_CLOSE` it is removed again, so no record outlives its
//!   connection;
//! - `cgroup_skb/egress` ([`egress`]): drops every packet addressed to a guarded address (ICMP,
//!   UDP, raw TCP…) that is not the daemon's own or from an exempt host cgroup, and counts it.
//!
//! Every entry point is a thin wrapper over a fallible `try_…` function.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![expect(
    unsafe_code,
    reason = "eBPF helpers and context fields are raw pointers into kernel memory"
)]

mod addr;
mod connect;
mod egress;
mod maps;
mod sock_ops;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// On the host the crate is an empty binary, so `cargo clippy --workspace` can check it.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
