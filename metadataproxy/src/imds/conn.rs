//! How many caller connections may be open, in total and per caller, and the 503 for one too
//! many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::caller::Identity;

/// Sent to a connection beyond a limit, before it is closed.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 40\r\n\r\n\
Service Unavailable: too many connections";

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    /// `HTTP_MAX_CONNECTIONS`.
    #[error("HTTP_MAX_CONNECTIONS reached")]
    Total,
    /// `HTTP_MAX_CONNECTIONS_PER_CALLER`.
    #[error("HTTP_MAX_CONNECTIONS_PER_CALLER reached")]
    Caller,
}

/// Counts open connections, in total and per caller.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_caller: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_caller: HashMap<Identity, usize>,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    caller: Identity,
}

impl ConnLimits {
    /// Limits of `max_total` connections and `max_per_caller` per caller (0 counts as 1).
    pub fn new(max_total: usize, max_per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_caller: max_per_caller.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection of `caller`, unless a limit is reached.
    pub fn try_acquire(self: &Arc<Self>, caller: Identity) -> Result<ConnPermit, LimitHit> {
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(LimitHit::Total);
        }
        let mine = open.by_caller.entry(caller.clone()).or_default();
        if *mine >= self.max_per_caller {
            return Err(LimitHit::Caller);
        }
        *mine += 1;
        open.total += 1;
        Ok(ConnPermit {
            limits: Arc::clone(self),
            caller,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn ip(last: u8) -> Identity {
        Identity::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    #[test]
    fn one_caller_at_its_limit_leaves_room_for_others() {
        let limits = ConnLimits::new(5, 2);
        let a1 = limits.try_acquire(ip(2)).expect("first");
        let _a2 = limits.try_acquire(ip(2)).expect("second");
        assert_eq!(limits.try_acquire(ip(2)).err(), Some(LimitHit::Caller));
        let _b = limits.try_acquire(ip(3)).expect("another caller");
        drop(a1);
        let _a3 = limits.try_acquire(ip(2)).expect("after one closed");
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn every_loopback_source_is_one_caller() {
        // Regression (issue 11, item 8): a host process sourcing connections from many 127.x.y.z
        // addresses counted as many callers and could take every connection.
        let limits = ConnLimits::new(100, 3);
        let from = |peer: &str| Identity::from_peer(peer.parse().unwrap());
        let _held: Vec<_> = ["127.0.0.2:1", "127.1.2.3:2", "[::1]:3"]
            .iter()
            .map(|p| limits.try_acquire(from(p)).expect("under the limit"))
            .collect();
        for peer in [
            "127.0.0.1:4",
            "127.255.0.9:5",
            "[::ffff:127.0.0.7]:6",
            "[::1]:7",
        ] {
            assert_eq!(
                limits.try_acquire(from(peer)).err(),
                Some(LimitHit::Caller),
                "{peer} is the same caller"
            );
        }
        assert_eq!(
            from("[::ffff:10.0.0.1]:1"),
            Identity::Ip("10.0.0.1".parse().unwrap())
        );
        assert!(
            limits.try_acquire(from("10.0.0.1:8")).is_ok(),
            "another caller"
        );
    }

    #[test]
    fn the_total_bounds_every_caller_and_frees_on_drop() {
        let limits = ConnLimits::new(3, 10);
        let permits: Vec<_> = (1..=3)
            .map(|i| limits.try_acquire(ip(i)).expect("under the total"))
            .collect();
        assert_eq!(limits.try_acquire(ip(9)).err(), Some(LimitHit::Total));
        drop(permits);
        assert_eq!(limits.open(), 0);
        assert!(limits.lock().by_caller.is_empty(), "no entry left behind");
        assert!(limits.try_acquire(ip(9)).is_ok());
    }
}
