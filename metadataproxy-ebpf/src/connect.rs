//! `cgroup/connect4` and `cgroup/connect6`: redirect callers' TCP connects to the metadata
//! service to the daemon, recording who they are; refuse every other connect to a guarded address.
//!
//! Fail closed: a guarded destination that cannot be redirected (not TCP port 80, IPv6 redirect
//! `off`, another spelling of the address) is refused at once (`EPERM`); a caller whose record
//! cannot be stored is still redirected (the daemon then refuses the record-less connection).
//!
//! Each program exists twice, differing only in how it recognises the daemon's own process
//! ([`is_daemon`]): `mp_connect4`/`mp_connect6` by its host pid, which every supported kernel
//! lets cgroup programs read; `mp_connect4_pidns`/`mp_connect6_pidns` by its pid in its own pid
//! namespace, with a helper cgroup programs may call only since Linux 6.10. The verifier rejects
//! a program that names a helper its type may not call even where the call is never reached, so
//! the host-pid variant must not contain the other's call at all: the choice is a const generic,
//! resolved at compile time.

use aya_ebpf::bindings::bpf_pidns_info;
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
    bpf_get_ns_current_pid_tgid,
};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use metadataproxy_common::{
    FLAG_IPV4, FLAG_IPV6, FLAG_OWN_NETNS_LOOPBACK, IMDS_PORT, INIT_PID_NS_INO, LOOPBACK4,
    OWNER_CALLER, OWNER_DAEMON, Record, Settings, SockMark, V4_MAPPED_WORD, counters,
};

use crate::addr::{V6, classify_v6, guarded_v4};
use crate::maps::{MP_EXEMPT, MP_SETTINGS, MP_SOCKS, count};

/// Verdict of a `cgroup/connect*` program that lets the connect go ahead.
const ALLOW: i32 = 1;
/// Verdict that refuses it: the caller's `connect()` fails with `EPERM`.
const REFUSE: i32 = 0;
/// `sizeof(struct bpf_pidns_info)`.
const PIDNS_INFO_SIZE: u32 = 8;
const _: () = assert!(size_of::<bpf_pidns_info>() == PIDNS_INFO_SIZE as usize);
/// `IPPROTO_TCP`.
const TCP: u32 = 6;

/// [`is_daemon`] by the daemon's host pid (`bpf_get_current_pid_tgid`).
const HOST_PID: bool = false;
/// [`is_daemon`] by the daemon's pid in its own pid namespace (`bpf_get_ns_current_pid_tgid`,
/// Linux 6.10+ in cgroup programs).
const OWN_PIDNS: bool = true;

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4::<HOST_PID>(&ctx)
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6::<HOST_PID>(&ctx)
}

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect4_pidns(ctx: SockAddrContext) -> i32 {
    try_connect4::<OWN_PIDNS>(&ctx)
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_connect6_pidns(ctx: SockAddrContext) -> i32 {
    try_connect6::<OWN_PIDNS>(&ctx)
}

/// Whether the current task is the daemon: by its tgid in its own pid namespace (`PIDNS`), or by
/// its host tgid, which [`Settings::daemon_tgid`] is only when the daemon runs in the initial pid
/// namespace (a settings entry written by a daemon in a pid namespace of its own names nobody).
fn is_daemon<const PIDNS: bool>(settings: &Settings) -> bool {
    if !PIDNS {
        return settings.pidns_ino == INIT_PID_NS_INO
            && (bpf_get_current_pid_tgid() >> 32) as u32 == settings.daemon_tgid;
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a stack buffer of the size passed. The helper fails (non-zero) when the
    // current task is not in that pid namespace: then it is not the daemon.
    let found = unsafe {
        bpf_get_ns_current_pid_tgid(
            settings.pidns_dev,
            settings.pidns_ino,
            &raw mut ns,
            PIDNS_INFO_SIZE,
        )
    };
    found == 0 && ns.tgid == settings.daemon_tgid
}

/// What to do with a connect to a guarded destination, before the rewrite.
enum Decision {
    /// The daemon's own, or an exempt host cgroup's: goes where it was going.
    Pass,
    /// A caller's, in the network namespace with this cookie: redirect it (its record is stored
    /// on the socket).
    Redirect(u64),
    /// A caller's that cannot be redirected.
    Refuse(u64),
}

/// Decides for a connect to a guarded destination; `redirectable` says whether this one could be
/// redirected (TCP, port 80, a target configured).
fn decide<const PIDNS: bool>(
    ctx: &SockAddrContext,
    settings: &Settings,
    redirectable: bool,
) -> Decision {
    // SAFETY: `sk` of a `bpf_sock_addr` is a valid socket for the storage helpers.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }.cast();
    if is_daemon::<PIDNS>(settings) {
        // Remembered on the socket so the egress guard lets its packets out.
        // SAFETY: as above.
        if let Some(mark) = unsafe { MP_SOCKS.get_or_create(sk) } {
            // SAFETY: a value of the socket's storage, valid for this program run.
            unsafe { (*mark).owner = OWNER_DAEMON };
        }
        return Decision::Pass;
    }
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a plain lookup of a u64 key; the value is only tested for presence.
    if unsafe { MP_EXEMPT.get(cgroup_id) }.is_some() {
        return Decision::Pass;
    }
    if !redirectable {
        return Decision::Refuse(cgroup_id);
    }
    // SAFETY: `ctx.sock_addr` is the program's context, valid for this helper.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: as above.
    if let Some(mark) = unsafe { MP_SOCKS.get_or_create(sk) } {
        // SAFETY: a value of the socket's storage, valid for this program run.
        unsafe {
            *mark = SockMark {
                record: Record {
                    cgroup_id,
                    pid_tgid: bpf_get_current_pid_tgid(),
                    netns_cookie,
                    connected_ns: 0,
                    orig_port: IMDS_PORT,
                    pad: [0; 6],
                },
                owner: OWNER_CALLER,
                pad: 0,
            };
        }
    }
    Decision::Redirect(netns_cookie)
}

/// The IPv4 address (network byte order) a caller in network namespace `netns` is sent to.
fn target4(settings: &Settings, netns: u64) -> u32 {
    if settings.flags & FLAG_OWN_NETNS_LOOPBACK != 0 && netns == settings.own_netns {
        LOOPBACK4
    } else {
        settings.target4
    }
}

fn try_connect4<const PIDNS: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are readable in connect4.
    let (protocol, ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.protocol, sa.user_ip4, sa.user_port)
    };
    let Some(settings) = MP_SETTINGS.get(0) else {
        return ALLOW;
    };
    if !guarded_v4(ip, settings.flags) {
        return ALLOW;
    }
    let redirectable =
        protocol == TCP && port == u32::from(IMDS_PORT.to_be()) && settings.flags & FLAG_IPV4 != 0;
    match decide::<PIDNS>(ctx, settings, redirectable) {
        Decision::Pass => ALLOW,
        Decision::Refuse(cgroup_id) => {
            count(counters::REFUSED4, cgroup_id);
            REFUSE
        }
        Decision::Redirect(netns) => {
            // SAFETY: `user_ip4` and `user_port` are writable in connect4.
            unsafe {
                (*ctx.sock_addr).user_ip4 = target4(settings, netns);
                (*ctx.sock_addr).user_port = u32::from(settings.port4);
            }
            ALLOW
        }
    }
}

fn try_connect6<const PIDNS: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are readable in connect6.
    // One 32-bit load per word: the verifier rejects the pointer arithmetic an array copy
    // compiles to.
    let (protocol, ip, port) = unsafe {
        let sa = ctx.sock_addr;
        (
            (*sa).protocol,
            [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            (*sa).user_port,
        )
    };
    let Some(settings) = MP_SETTINGS.get(0) else {
        return ALLOW;
    };
    let kind = classify_v6(&ip, settings.flags);
    if kind == V6::Other {
        return ALLOW;
    }
    let tcp80 = protocol == TCP && port == u32::from(IMDS_PORT.to_be());
    let redirectable = match kind {
        V6::Mapped => tcp80 && settings.flags & FLAG_IPV4 != 0,
        V6::Native => tcp80 && settings.flags & FLAG_IPV6 != 0,
        V6::Alias | V6::Other => false,
    };
    match decide::<PIDNS>(ctx, settings, redirectable) {
        Decision::Pass => ALLOW,
        Decision::Refuse(cgroup_id) => {
            count(counters::REFUSED6, cgroup_id);
            REFUSE
        }
        Decision::Redirect(netns) => {
            // An IPv4-mapped destination goes to the IPv4 target, mapped; a native one to the
            // IPv6 target (itself IPv4-mapped by default).
            let (target, target_port) = if kind == V6::Mapped {
                (
                    [0, 0, V4_MAPPED_WORD.to_be(), target4(settings, netns)],
                    settings.port4,
                )
            } else {
                (settings.target6, settings.port6)
            };
            // SAFETY: `user_ip6` (as 32-bit words) and `user_port` are writable in connect6.
            unsafe {
                (*ctx.sock_addr).user_ip6[0] = target[0];
                (*ctx.sock_addr).user_ip6[1] = target[1];
                (*ctx.sock_addr).user_ip6[2] = target[2];
                (*ctx.sock_addr).user_ip6[3] = target[3];
                (*ctx.sock_addr).user_port = u32::from(target_port);
            }
            ALLOW
        }
    }
}
