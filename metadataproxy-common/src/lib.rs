//! Types and names shared by the eBPF programs and the daemon; `no_std`, explicit `repr(C)` layout.
//!
//! Every map key and value is `repr(C)` with explicit padding fields and a size assertion, so the
//! kernel side and user space agree byte for byte and no uninitialised padding reaches a map.
#![no_std]

/// The EC2 instance metadata service's IPv4 address, 169.254.169.254, in host byte order.
pub const IMDS_IPV4: u32 = 0xA9FE_A9FE;
/// The metadata service's IPv6 address, `fd00:ec2::254`, as four host-order 32-bit words.
pub const IMDS_IPV6: [u32; 4] = [0xfd00_0ec2, 0, 0, 0x0000_0254];
/// The port the metadata service listens on.
pub const IMDS_PORT: u16 = 80;
/// The container-credentials endpoint (EKS Pod Identity's), 169.254.170.23, in host byte order.
pub const ECS_IPV4: u32 = 0xA9FE_AA17;
/// The container-credentials endpoint's IPv6 address, `fd00:ec2::23`, as host-order words.
pub const ECS_IPV6: [u32; 4] = [0xfd00_0ec2, 0, 0, 0x0000_0023];

/// Map names (also the file names of their pins in bpffs).
pub mod maps {
    /// `Array<Settings>` with one entry: the redirect target and the exemptions.
    pub const SETTINGS: &str = "MP_SETTINGS";
    /// `LruHashMap<u64 socket cookie, Record>`: written by connect4/6, read by `sock_ops`.
    pub const BY_COOKIE: &str = "MP_BY_COOKIE";
    /// `LruHashMap<Conn4, Record>`: written by `sock_ops`, read and removed by the daemon.
    pub const CONN4: &str = "MP_CONN4";
    /// `LruHashMap<Conn6, Record>`: the IPv6 twin of [`CONN4`].
    pub const CONN6: &str = "MP_CONN6";
    /// `HashMap<u64 cgroup id, u32>`: cgroups whose connections are never redirected.
    pub const EXEMPT: &str = "MP_EXEMPT";
}

/// Program names (the Rust function names in the eBPF crate; also the pin names of their links).
pub mod programs {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "mp_connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "mp_connect6";
    /// `sock_ops`.
    pub const SOCK_OPS: &str = "mp_sock_ops";
}

/// [`Settings::flags`]: redirect IPv4 connections to 169.254.169.254:80.
pub const FLAG_IPV4: u32 = 1;
/// [`Settings::flags`]: redirect IPv6 connections to `[fd00:ec2::254]:80`.
pub const FLAG_IPV6: u32 = 2;
/// [`Settings::flags`]: also redirect the container-credentials endpoint (`ECS_ENDPOINT`):
/// 169.254.170.23:80 with [`FLAG_IPV4`], `[fd00:ec2::23]:80` with [`FLAG_IPV6`].
pub const FLAG_ECS: u32 = 4;

/// The one entry of [`maps::SETTINGS`]; all zero means "redirect nothing".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// cgroup id of the daemon (its connections are never redirected); 0: none.
    pub daemon_cgroup: u64,
    /// IPv6 redirect target address, network byte order (as in `bpf_sock_addr.user_ip6`).
    pub target6: [u32; 4],
    /// IPv4 redirect target address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub target4: u32,
    /// IPv4 redirect target port, network byte order.
    pub port4: u16,
    /// IPv6 redirect target port, network byte order.
    pub port6: u16,
    /// Process id (tgid) of the daemon; its connections are never redirected.
    pub daemon_tgid: u32,
    /// [`FLAG_IPV4`] | [`FLAG_IPV6`] | [`FLAG_ECS`].
    pub flags: u32,
}
const _: () = assert!(size_of::<Settings>() == 40);

/// What the kernel knew about a redirected connection when it was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// cgroup v2 id of the calling task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the upper 32 bits, thread id in the lower.
    pub pid_tgid: u64,
    /// Cookie of the caller's network namespace.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the connection was sent on its way: records
    /// older than a connection attempt can last are never trusted.
    pub connected_ns: u64,
    /// Original destination port (host order), for logs; always 80 today.
    pub orig_port: u16,
    /// Explicit padding; always zero.
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<Record>() == 40);

/// An IPv4 connection as the daemon sees it at `accept()`: (peer, local).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Conn4 {
    /// Caller's address, network byte order.
    pub peer_addr: u32,
    /// Daemon's address (the redirect target), network byte order.
    pub local_addr: u32,
    /// Caller's port, host byte order.
    pub peer_port: u16,
    /// Daemon's port, host byte order.
    pub local_port: u16,
}
const _: () = assert!(size_of::<Conn4>() == 12);

/// An IPv6 connection as the daemon sees it at `accept()`: (peer, local).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Conn6 {
    /// Caller's address, network byte order words.
    pub peer_addr: [u32; 4],
    /// Daemon's address, network byte order words.
    pub local_addr: [u32; 4],
    /// Caller's port, host byte order.
    pub peer_port: u16,
    /// Daemon's port, host byte order.
    pub local_port: u16,
}
const _: () = assert!(size_of::<Conn6>() == 36);

#[cfg(feature = "user")]
mod pod {
    #![expect(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait; these types are repr(C) without implicit padding"
    )]
    // SAFETY: repr(C), Copy, every field plain data, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Record {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Conn4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Conn6 {}
}
