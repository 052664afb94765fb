//! `sock_ops`: moves a redirected connection's record to the 4-tuple maps once its source port
//! exists (`TCP_CONNECT_CB`), and removes it when the connection closes (`STATE_CB` to
//! `TCP_CLOSE`: refused, reset, timed out, or done), so no record outlives its connection.

use aya_ebpf::bindings::{
    BPF_ANY, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::sock_ops;
use aya_ebpf::programs::SockOpsContext;
use metadataproxy_common::{Conn4, Conn6, OWNER_CALLER, V4_MAPPED_WORD};

use crate::maps::{MP_CONN4, MP_CONN6, MP_SOCKS};

/// `AF_INET` / `AF_INET6` as `bpf_sock_ops.family` reports them.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `TCP_CLOSE` of `enum tcp_state`.
const TCP_CLOSE: u32 = 7;

#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    0
}

/// `bpf_sock_ops.remote_port` holds the network-order port in the upper 16 bits on some kernels
/// and in the lower 16 bits on others; a real port is never 0, so the non-zero half is it.
fn remote_port(raw: u32) -> u16 {
    let be = if raw > 0xffff { raw >> 16 } else { raw };
    u16::from_be(u16::try_from(be).unwrap_or(0))
}

/// The connection's key as the daemon will see it at `accept()` (peer = this socket's end).
enum Key {
    V4(Conn4),
    V6(Conn6),
}

fn key(ctx: &SockOpsContext) -> Option<Key> {
    // Host order; always below 65536.
    let local_port = u16::try_from(ctx.local_port()).unwrap_or(0);
    let remote = remote_port(ctx.remote_port());
    let v4 = || {
        Key::V4(Conn4 {
            peer_addr: ctx.local_ip4(),
            local_addr: ctx.remote_ip4(),
            peer_port: local_port,
            local_port: remote,
        })
    };
    match ctx.family() {
        AF_INET => Some(v4()),
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
            // A dual-stack socket connected to `::ffff:a.b.c.d` talks IPv4: the daemon accepts
            // it on an IPv4 address, and its IPv4 fields hold the addresses (the IPv6 source is
            // not even set yet at TCP_CONNECT_CB).
            if remote6[0] == 0 && remote6[1] == 0 && remote6[2] == V4_MAPPED_WORD.to_be() {
                return Some(v4());
            }
            Some(Key::V6(Conn6 {
                peer_addr: local6,
                local_addr: remote6,
                peer_port: local_port,
                local_port: remote,
            }))
        }
        _ => None,
    }
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => connected(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            match key(ctx) {
                Some(Key::V4(k)) => MP_CONN4.remove(k)?,
                Some(Key::V6(k)) => MP_CONN6.remove(k)?,
                None => {}
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `TCP_CONNECT_CB`: a redirected caller's record, stored on its socket at connect, goes to the
/// 4-tuple map; the socket asks for its state changes, to remove the record when it closes.
fn connected(ctx: &SockOpsContext) -> Result<(), i32> {
    // SAFETY: `ctx.ops` is the program's context; `sk` is null or a full socket.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null `sk` of the context, as the storage helper wants.
    let Some(mark) = (unsafe { MP_SOCKS.get(sk.cast()) }) else {
        return Ok(());
    };
    // SAFETY: a value of the socket's storage, valid for this program run; copied out at once.
    let mark = unsafe { *mark };
    if mark.owner != OWNER_CALLER {
        return Ok(());
    }
    let mut record = mark.record;
    // SAFETY: a helper without arguments.
    record.connected_ns = unsafe { bpf_ktime_get_ns() };
    ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG.cast_signed())?;
    match key(ctx) {
        Some(Key::V4(k)) => MP_CONN4.insert(k, record, u64::from(BPF_ANY)),
        Some(Key::V6(k)) => MP_CONN6.insert(k, record, u64::from(BPF_ANY)),
        None => Ok(()),
    }
}
