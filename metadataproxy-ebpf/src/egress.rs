//! `cgroup_skb/egress`: the guard. Drops every packet addressed to a guarded address (ICMP, UDP,
//! raw TCP, IPv4-mapped and other spellings included) unless it comes from one of the daemon's own
//! sockets or from an exempt host cgroup, and counts it per family.
//!
//! Redirected connections never carry a guarded destination (connect4/6 rewrote it), so the
//! guard only ever sees what got around `connect()`. It runs for every packet of every socket in
//! the attached cgroups: the destination check comes first and is one load.

use aya_ebpf::helpers::{bpf_sk_fullsock, bpf_skb_cgroup_id};
use aya_ebpf::macros::cgroup_skb;
use aya_ebpf::programs::SkBuffContext;
use metadataproxy_common::{OWNER_DAEMON, counters};

use crate::addr::{V6, classify_v6, guarded_v4};
use crate::maps::{MP_EXEMPT, MP_SETTINGS, MP_SOCKS, count};

/// Verdicts of a `cgroup_skb` program.
const PASS: i32 = 1;
const DROP: i32 = 0;
/// Where the destination address starts in an IPv4 / IPv6 header (the program sees the packet
/// from its network header on).
const IPV4_DST: usize = 16;
const IPV6_DST: usize = 24;

#[cgroup_skb(egress)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn mp_egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or(PASS)
}

/// The counter a packet to a guarded address goes to, `None` for any other packet.
fn guarded(ctx: &SkBuffContext, flags: u32) -> Result<Option<u32>, i64> {
    let first: u8 = ctx.load(0)?;
    match first >> 4 {
        4 => {
            let dst: u32 = ctx.load(IPV4_DST)?;
            Ok(guarded_v4(dst, flags).then_some(counters::DROPPED4))
        }
        6 => {
            let dst = [
                ctx.load::<u32>(IPV6_DST)?,
                ctx.load::<u32>(IPV6_DST + 4)?,
                ctx.load::<u32>(IPV6_DST + 8)?,
                ctx.load::<u32>(IPV6_DST + 12)?,
            ];
            Ok((classify_v6(&dst, flags) != V6::Other).then_some(counters::DROPPED6))
        }
        _ => Ok(None),
    }
}

fn try_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let Some(settings) = MP_SETTINGS.get(0) else {
        return Ok(PASS);
    };
    let Some(counter) = guarded(ctx, settings.flags)? else {
        return Ok(PASS);
    };
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; `sk` is null or a socket.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if !sk.is_null() {
        // SAFETY: a non-null socket of the context.
        let full = unsafe { bpf_sk_fullsock(sk) };
        if !full.is_null() {
            // SAFETY: a full socket, as the storage helper wants.
            // SAFETY: the value is a map value of this socket, read at once.
            if let Some(mark) = unsafe { MP_SOCKS.get(full.cast()) }
                && unsafe { (*mark).owner } == OWNER_DAEMON
            {
                return Ok(PASS);
            }
        }
    }
    // The socket's cgroup, not the current task's: packets are also sent from softirq context.
    // SAFETY: `skb` is the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: a plain lookup of a u64 key; the value is only tested for presence.
    if unsafe { MP_EXEMPT.get(cgroup_id) }.is_some() {
        return Ok(PASS);
    }
    count(counter, cgroup_id);
    Ok(DROP)
}
