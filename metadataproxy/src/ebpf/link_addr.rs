//! The default redirect target's address, made local on `lo` (netlink, no `ip`).
//!
//! With `EBPF_TARGET` unset, callers are sent to 169.254.170.45:PORT. The daemon adds that address
//! to `lo` as a /32 when it is missing (`CAP_NET_ADMIN`, which loading the programs needs anyway)
//! and leaves it on exit: while no daemon runs, nothing listens there and redirected connections
//! are refused (fail closed). Linux delivers to any local address whatever the interface, so host
//! processes reach it locally and bridge containers through their default route to the host.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressAttribute;

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
