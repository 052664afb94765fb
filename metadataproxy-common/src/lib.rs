//! Types and names shared by the eBPF programs and the daemon; `no_std`, explicit `repr(C)` layout.
#![no_std]

/// The EC2 instance metadata service's IPv4 address, 169.254.169.254, in host byte order.
pub const IMDS_IPV4: u32 = 0xA9FE_A9FE;
/// The port the metadata service listens on.
pub const IMDS_PORT: u16 = 80;
