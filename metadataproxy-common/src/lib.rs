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
/// Third word (host order) of an IPv4-mapped IPv6 address, `::ffff:a.b.c.d`.
pub const V4_MAPPED_WORD: u32 = 0x0000_ffff;
/// First word (host order) of the NAT64 well-known prefix, `64:ff9b::/96`.
pub const NAT64_WORD: u32 = 0x0064_ff9b;

/// Map names (also the file names of their pins in bpffs).
pub mod maps {
    /// `Array<Settings>` with one entry: the redirect target and the exemptions.
    pub const SETTINGS: &str = "MP_SETTINGS";
    /// Socket storage (`BPF_MAP_TYPE_SK_STORAGE`) of [`crate::SockMark`]: written by connect4/6,
    /// read by `sock_ops` (a caller's record) and by the egress guard (the daemon's own sockets);
    /// freed with its socket.
    pub const SOCKS: &str = "MP_SOCKS";
    /// `LruHashMap<Conn4, Record>`: written by `sock_ops`, read and removed by the daemon, removed
    /// by `sock_ops` when the connection closes.
    pub const CONN4: &str = "MP_CONN4";
    /// `LruHashMap<Conn6, Record>`: the IPv6 twin of [`CONN4`].
    pub const CONN6: &str = "MP_CONN6";
    /// `HashMap<u64 cgroup id, u32>`: cgroups whose connections are never redirected.
    pub const EXEMPT: &str = "MP_EXEMPT";
    /// `PerCpuArray<u64>` of [`crate::counters::COUNT`] counters (see [`crate::counters`]).
    pub const COUNTERS: &str = "MP_COUNTERS";
    /// `Array<DropSample>` with one entry: the last packet dropped or connect refused.
    pub const LAST_DROP: &str = "MP_LAST_DROP";
}

/// Program names (the Rust function names in the eBPF crate; also the pin names of their links).
///
/// The connect programs come in two variants that differ only in how they recognise the daemon's
/// own process: by its pid in the initial pid namespace (`mp_connect4`/`mp_connect6`, the helper
/// cgroup programs may call on every supported kernel), or by its pid in its own pid namespace
/// (the `_pidns` ones: `bpf_get_ns_current_pid_tgid`, which cgroup programs may call only since
/// Linux 6.10). The loader loads one of them; its links are pinned under the first variant's
/// name whichever it is, so a restart that changes variant replaces the pins in place.
pub mod programs {
    /// `cgroup/connect4`, recognising the daemon by its host pid.
    pub const CONNECT4: &str = "mp_connect4";
    /// `cgroup/connect6`, recognising the daemon by its host pid.
    pub const CONNECT6: &str = "mp_connect6";
    /// `cgroup/connect4`, recognising the daemon by its pid in its own pid namespace (6.10+).
    pub const CONNECT4_PIDNS: &str = "mp_connect4_pidns";
    /// `cgroup/connect6`, recognising the daemon by its pid in its own pid namespace (6.10+).
    pub const CONNECT6_PIDNS: &str = "mp_connect6_pidns";
    /// `sock_ops`.
    pub const SOCK_OPS: &str = "mp_sock_ops";
    /// `cgroup_skb/egress`: the guard dropping packets to the metadata addresses.
    pub const EGRESS: &str = "mp_egress";
}

/// Indexes of the [`maps::COUNTERS`] array.
pub mod counters {
    /// IPv4 packets to a guarded address dropped by the egress guard.
    pub const DROPPED4: u32 = 0;
    /// IPv6 packets to a guarded address dropped by the egress guard.
    pub const DROPPED6: u32 = 1;
    /// `connect()` calls (IPv4 sockets) to a guarded address refused (`EPERM`).
    pub const REFUSED4: u32 = 2;
    /// `connect()` calls (IPv6 sockets) to a guarded address refused (`EPERM`).
    pub const REFUSED6: u32 = 3;
    /// Entries of the array.
    pub const COUNT: u32 = 4;
}

/// [`Settings::flags`]: redirect IPv4 connections to 169.254.169.254:80.
pub const FLAG_IPV4: u32 = 1;
/// [`Settings::flags`]: redirect IPv6 connections to `[fd00:ec2::254]:80` (without it they are
/// refused; IPv4-mapped destinations follow [`FLAG_IPV4`]).
pub const FLAG_IPV6: u32 = 2;
/// [`Settings::flags`]: also redirect the container-credentials endpoint (`ECS_ENDPOINT`):
/// 169.254.170.23:80 with [`FLAG_IPV4`], `[fd00:ec2::23]:80` with [`FLAG_IPV6`].
pub const FLAG_ECS: u32 = 4;
/// [`Settings::flags`]: callers in the daemon's own network namespace
/// ([`Settings::own_netns`]) are sent to `127.0.0.1` (IPv4-mapped for IPv6 sockets) on the IPv4
/// target's port instead of the target: a loopback destination, whose closed connections' ports
/// Linux reuses at once (`net.ipv4.tcp_tw_reuse=2`), where the default link-local target would
/// hold each for 60 s and a busy host would run out of ports. Set only with the default target and
/// a daemon listening on `127.0.0.1` at that port.
pub const FLAG_OWN_NETNS_LOOPBACK: u32 = 8;
/// `127.0.0.1` as `bpf_sock_addr.user_ip4` holds it (network byte order).
pub const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Inode number of the initial pid namespace (`PROC_PID_INIT_INO`, fixed in every kernel): a
/// daemon whose `/proc/self/ns/pid` has it runs in the host's pid namespace, where its pid is the
/// one `bpf_get_current_pid_tgid` reports.
pub const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// The one entry of [`maps::SETTINGS`]; all zero means "redirect nothing, guard nothing".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Device of the daemon's pid namespace (`stat /proc/self/ns/pid`, `st_dev`); with
    /// [`Settings::pidns_ino`] it lets the `_pidns` connect programs recognise the daemon's
    /// process when it runs in a pid namespace of its own.
    pub pidns_dev: u64,
    /// Inode of the daemon's pid namespace. The host-pid connect programs trust
    /// [`Settings::daemon_tgid`] only when it is [`INIT_PID_NS_INO`] (then it is a host pid).
    pub pidns_ino: u64,
    /// IPv6 redirect target address, network byte order (as in `bpf_sock_addr.user_ip6`); may be
    /// an IPv4-mapped address (`::ffff:a.b.c.d`): the connection is then made over IPv4.
    pub target6: [u32; 4],
    /// IPv4 redirect target address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub target4: u32,
    /// IPv4 redirect target port, network byte order.
    pub port4: u16,
    /// IPv6 redirect target port, network byte order.
    pub port6: u16,
    /// Process id (tgid) of the daemon, as seen in its own pid namespace; its connections are
    /// never redirected and its sockets' packets never dropped.
    pub daemon_tgid: u32,
    /// [`FLAG_IPV4`] | [`FLAG_IPV6`] | [`FLAG_ECS`] | [`FLAG_OWN_NETNS_LOOPBACK`].
    pub flags: u32,
    /// Cookie of the daemon's network namespace (`SO_NETNS_COOKIE`), for
    /// [`FLAG_OWN_NETNS_LOOPBACK`].
    pub own_netns: u64,
}
const _: () = assert!(size_of::<Settings>() == 56);

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

/// [`SockMark::owner`]: a caller's socket redirected to the daemon; its record moves to the
/// connection maps when the connection is sent on its way.
pub const OWNER_CALLER: u32 = 1;
/// [`SockMark::owner`]: one of the daemon's own sockets to a guarded address (its upstream calls
/// to the real metadata service): never redirected, its packets never dropped.
pub const OWNER_DAEMON: u32 = 2;

/// What connect4/6 leave on a socket (in [`maps::SOCKS`], freed with the socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockMark {
    /// Who made the connection (meaningful for [`OWNER_CALLER`]).
    pub record: Record,
    /// [`OWNER_CALLER`] or [`OWNER_DAEMON`].
    pub owner: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<SockMark>() == 48);

/// The last packet the egress guard dropped, or the last connect refused ([`maps::LAST_DROP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    /// cgroup v2 id of the sender (the socket's cgroup).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` when it happened.
    pub at_ns: u64,
    /// Which counter it was added to (a [`counters`] index).
    pub counter: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<DropSample>() == 24);

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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockMark {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropSample {}
}
