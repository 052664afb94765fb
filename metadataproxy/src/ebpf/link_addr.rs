//! The default redirect target's address, made local on `lo` (netlink, no `ip`).
//!
//! With `EBPF_TARGET` unset, callers are sent to 169.254.170.45:PORT. The daemon adds that address
//! to `lo` as a /32 when it is missing (`CAP_NET_ADMIN`, which loading the programs needs anyway)
//! and leaves it on exit: while no daemon runs, nothing listens there and redirected connections
//! are refused (fail closed). Linux delivers to any local address whatever the interface, so host
//! processes reach it locally and bridge containers through their default route to the host.
//! While the daemon runs it watches `lo`'s addresses ([`keep`]) and puts the address back when
//! someone removes it, with a warn line: without it every redirected caller would be refused.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

/// `lo`'s interface index: the loopback device is always index 1 (`LOOPBACK_IFINDEX`).
const LO_INDEX: u32 = 1;

/// Why the address could not be checked or added.
#[derive(Debug, thiserror::Error)]
pub enum LinkAddrError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Listing `lo`'s addresses failed.
    #[error("cannot list the addresses of lo: {0}")]
    List(#[source] rtnetlink::Error),
    /// Adding the address failed (typically: `CAP_NET_ADMIN` missing).
    #[error("cannot add {addr}/32 to lo (needs CAP_NET_ADMIN): {source}")]
    Add {
        /// The address.
        addr: Ipv4Addr,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The address was on `lo` already.
    Present,
    /// It was missing and has been added.
    Added,
}

fn handle() -> Result<rtnetlink::Handle, LinkAddrError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkAddrError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn on_lo(handle: &rtnetlink::Handle, addr: Ipv4Addr) -> Result<bool, LinkAddrError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(LO_INDEX)
        .execute();
    // Read the dump to its end (a response left unread makes the connection complain).
    let mut found = false;
    while let Some(msg) = addrs.try_next().await.map_err(LinkAddrError::List)? {
        found |= msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == IpAddr::V4(addr))
        });
    }
    Ok(found)
}

/// Whether `addr` is on `lo` (for `doctor`).
pub async fn present(addr: Ipv4Addr) -> Result<bool, LinkAddrError> {
    on_lo(&handle()?, addr).await
}

/// Makes `addr` a /32 on `lo` unless it is there already.
pub async fn ensure(addr: Ipv4Addr) -> Result<Presence, LinkAddrError> {
    let handle = handle()?;
    if on_lo(&handle, addr).await? {
        return Ok(Presence::Present);
    }
    match handle
        .address()
        .add(LO_INDEX, IpAddr::V4(addr), 32)
        .execute()
        .await
    {
        Ok(()) => Ok(Presence::Added),
        // Added meanwhile (another daemon starting at the same moment): present all the same.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
            Ok(Presence::Present)
        }
        Err(source) => Err(LinkAddrError::Add { addr, source }),
    }
}

/// Whether `msg` (an address event) says `addr` left `lo`.
fn removed(msg: &NetlinkMessage<RouteNetlinkMessage>, addr: Ipv4Addr) -> bool {
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) = &msg.payload else {
        return false;
    };
    is_on_lo(m, addr)
}

fn is_on_lo(m: &AddressMessage, addr: Ipv4Addr) -> bool {
    m.header.index == LO_INDEX
        && m.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == IpAddr::V4(addr))
        })
}

/// Watches `lo`'s IPv4 addresses for the life of the process and puts `addr` back whenever it is
/// removed (a warn line says so). Subscribes before it checks once more, so no removal between
/// [`ensure`] and the subscription goes unseen.
pub fn keep(addr: Ipv4Addr) -> Result<(), LinkAddrError> {
    let (connection, _, mut events) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Ifaddr])
            .map_err(LinkAddrError::Socket)?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        let put_back = || async {
            match ensure(addr).await {
                Ok(Presence::Added) => tracing::warn!(
                    address = %addr,
                    "the redirect target's address was removed from lo while the daemon runs (redirected callers were refused meanwhile); added it back"
                ),
                Ok(Presence::Present) => {}
                Err(e) => tracing::error!(
                    address = %addr,
                    error = %e,
                    "the redirect target's address is gone from lo and cannot be added back: redirected callers are refused"
                ),
            }
        };
        put_back().await;
        while let Some((msg, _)) = events.next().await {
            if removed(&msg, addr) {
                put_back().await;
            }
        }
        tracing::warn!(address = %addr, "stopped watching lo's addresses: {addr} is no longer put back if removed");
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(del: bool, index: u32, ip: &str) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.attributes
            .push(AddressAttribute::Local(ip.parse().expect("address")));
        let inner = if del {
            RouteNetlinkMessage::DelAddress(m)
        } else {
            RouteNetlinkMessage::NewAddress(m)
        };
        NetlinkMessage::from(inner)
    }

    #[test]
    fn only_the_targets_removal_from_lo_counts() {
        let target = Ipv4Addr::new(169, 254, 170, 45);
        assert!(removed(&event(true, LO_INDEX, "169.254.170.45"), target));
        assert!(!removed(&event(false, LO_INDEX, "169.254.170.45"), target));
        assert!(!removed(&event(true, 2, "169.254.170.45"), target));
        assert!(!removed(&event(true, LO_INDEX, "127.0.0.1"), target));
    }
}
