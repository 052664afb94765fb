//! The maps and the three programs (connect4, connect6, `sock_ops`).
//!
//! connect4/6 redirect the metadata service's address and, when [`FLAG_ECS`] is set, the
//! container-credentials endpoint's, to the daemon.
//!
//! Map sizes here are placeholders: the daemon sets every size from its configuration at load time.

use aya_ebpf::bindings::{BPF_ANY, BPF_SOCK_OPS_TCP_CONNECT_CB};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
    bpf_get_socket_cookie, bpf_ktime_get_ns,
};
use aya_ebpf::macros::{cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use metadataproxy_common::{
    Conn4, Conn6, ECS_IPV4, ECS_IPV6, FLAG_ECS, FLAG_IPV4, FLAG_IPV6, IMDS_IPV4, IMDS_IPV6,
    IMDS_PORT, Record, Settings,
};

/// Verdict of a `cgroup/connect*` program that lets the connect go ahead.
const ALLOW: i32 = 1;
/// `IPPROTO_TCP`.
const TCP: u32 = 6;
/// `AF_INET` / `AF_INET6` as `bpf_sock_ops.family` reports them.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[map]
static MP_SETTINGS: Array<Settings> = Array::pinned(1, 0);
#[map]
static MP_BY_COOKIE: LruHashMap<u64, Record> = LruHashMap::pinned(16_384, 0);
#[map]
static MP_CONN4: LruHashMap<Conn4, Record> = LruHashMap::pinned(16_384, 0);
#[map]
static MP_CONN6: LruHashMap<Conn6, Record> = LruHashMap::pinned(16_384, 0);
#[map]
static MP_EXEMPT: HashMap<u64, u32> = HashMap::pinned(4_096, 0);

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    ALLOW
}

#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    0
}

/// The settings, if the caller of this connect is to be redirected at all: `flag` is the address
/// family's flag, and `ecs` whether the destination is the container-credentials endpoint (which
/// [`FLAG_ECS`] must also enable).
fn redirect_settings(flag: u32, ecs: bool) -> Option<(&'static Settings, u64, u64)> {
    let settings = MP_SETTINGS.get(0)?;
    let needed = if ecs { flag | FLAG_ECS } else { flag };
    if settings.flags & needed != needed {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.daemon_tgid {
        return None;
    }
    // SAFETY: a helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == settings.daemon_cgroup {
        return None;
    }
    // SAFETY: a plain lookup of a u64 key; the value is only tested for presence.
    if unsafe { MP_EXEMPT.get(cgroup) }.is_some() {
        return None;
    }
    Some((settings, cgroup, pid_tgid))
}

/// Saves who is connecting under the socket's cookie.
fn remember(ctx: &SockAddrContext, cgroup_id: u64, pid_tgid: u64) -> Result<(), i32> {
    // SAFETY: `ctx.sock_addr` is the program's context, valid for these helpers.
    let (cookie, netns_cookie) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    };
    let record = Record {
        cgroup_id,
        pid_tgid,
        netns_cookie,
        connected_ns: 0,
        orig_port: IMDS_PORT,
        pad: [0; 6],
    };
    MP_BY_COOKIE.insert(cookie, record, u64::from(BPF_ANY))
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), i32> {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are readable in connect4.
    let (protocol, ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, sa.user_ip4, sa.user_port)
    };
    let ecs = ip == ECS_IPV4.to_be();
    if protocol != TCP || !(ecs || ip == IMDS_IPV4.to_be()) || port != u32::from(IMDS_PORT.to_be())
    {
        return Ok(());
    }
    let Some((settings, cgroup_id, pid_tgid)) = redirect_settings(FLAG_IPV4, ecs) else {
        return Ok(());
    };
    remember(ctx, cgroup_id, pid_tgid)?;
    // SAFETY: `user_ip4` and `user_port` are writable in connect4.
    unsafe {
        (*ctx.sock_addr).user_ip4 = settings.target4;
        (*ctx.sock_addr).user_port = u32::from(settings.port4);
    }
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), i32> {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are readable in connect6.
    let (protocol, ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, sa.user_ip6, sa.user_port)
    };
    let imds = [
        IMDS_IPV6[0].to_be(),
        IMDS_IPV6[1].to_be(),
        IMDS_IPV6[2].to_be(),
        IMDS_IPV6[3].to_be(),
    ];
    let ecs_addr = [
        ECS_IPV6[0].to_be(),
        ECS_IPV6[1].to_be(),
        ECS_IPV6[2].to_be(),
        ECS_IPV6[3].to_be(),
    ];
    let ecs = ip == ecs_addr;
    if protocol != TCP || !(ecs || ip == imds) || port != u32::from(IMDS_PORT.to_be()) {
        return Ok(());
    }
    let Some((settings, cgroup_id, pid_tgid)) = redirect_settings(FLAG_IPV6, ecs) else {
        return Ok(());
    };
    remember(ctx, cgroup_id, pid_tgid)?;
    let target = settings.target6;
    // SAFETY: `user_ip6` (as 32-bit words) and `user_port` are writable in connect6.
    unsafe {
        (*ctx.sock_addr).user_ip6[0] = target[0];
        (*ctx.sock_addr).user_ip6[1] = target[1];
        (*ctx.sock_addr).user_ip6[2] = target[2];
        (*ctx.sock_addr).user_ip6[3] = target[3];
        (*ctx.sock_addr).user_port = u32::from(settings.port6);
    }
    Ok(())
}

/// `bpf_sock_ops.remote_port` holds the network-order port in the upper 16 bits on some kernels
/// and in the lower 16 bits on others; a real port is never 0, so the non-zero half is it.
fn remote_port(raw: u32) -> u16 {
    let be = if raw > 0xffff { raw >> 16 } else { raw };
    u16::from_be(u16::try_from(be).unwrap_or(0))
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return Ok(());
    }
    // SAFETY: `ctx.ops` is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the record is copied out at once; a concurrent update could at worst tear it.
    let Some(mut record) = (unsafe { MP_BY_COOKIE.get(cookie) }).copied() else {
        return Ok(());
    };
    // SAFETY: a helper without arguments.
    record.connected_ns = unsafe { bpf_ktime_get_ns() };
    // Host order; always below 65536.
    let local_port = u16::try_from(ctx.local_port()).unwrap_or(0);
    let remote = remote_port(ctx.remote_port());
    match ctx.family() {
        AF_INET => {
            let key = Conn4 {
                peer_addr: ctx.local_ip4(),
                local_addr: ctx.remote_ip4(),
                peer_port: local_port,
                local_port: remote,
            };
            MP_CONN4.insert(key, record, u64::from(BPF_ANY))?;
        }
        AF_INET6 => {
            // One 32-bit load per word at a constant context offset: the verifier rejects the
            // pointer arithmetic an array copy compiles to.
            // SAFETY: `ctx.ops` is the program's context; these fields are readable in sock_ops.
            let (local6, remote6) = unsafe {
                let ops = ctx.ops;
                (
                    [
                        core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
                        core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
                        core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
                        core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
                    ],
                    [
                        core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                        core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                        core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                        core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
                    ],
                )
            };
            let key = Conn6 {
                peer_addr: local6,
                local_addr: remote6,
                peer_port: local_port,
                local_port: remote,
            };
            MP_CONN6.insert(key, record, u64::from(BPF_ANY))?;
        }
        _ => {}
    }
    MP_BY_COOKIE.remove(cookie)
}
