//! The connection table: what the kernel recorded for a redirected connection, found at `accept()`
//! by (peer, local) and removed once read.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::Mutex;
use std::time::Duration;

use aya::maps::{HashMap, IterableMap as _, MapData};
use metadataproxy_common::{Conn4, Conn6, Record};

use crate::caller::KernelRecord;

impl From<Record> for KernelRecord {
    fn from(r: Record) -> Self {
        let Record {
            cgroup_id,
            pid_tgid,
            netns_cookie,
            connected_ns: _,
            orig_port: _,
            pad: _,
        } = r;
        Self {
            cgroup_id,
            pid: u32::try_from(pid_tgid >> 32).unwrap_or(0),
            netns_cookie,
        }
    }
}

/// The pinned `MP_CONN4` / `MP_CONN6` maps.
#[derive(Debug)]
pub struct ConnTable {
    v4: Mutex<HashMap<MapData, Conn4, Record>>,
    v6: Mutex<HashMap<MapData, Conn6, Record>>,
    /// The daemon's network namespace cookie (`None`: unknown).
    own_netns: Option<u64>,
}

/// Why a record found at `accept()` is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distrust {
    /// Older than a connection attempt can last: its connection was never accepted, and its
    /// 4-tuple may since belong to a caller that was not redirected.
    Stale,
    /// The connection reached a loopback address of the daemon, but the record was made in
    /// another network namespace: that caller was sent to its *own* loopback (where the daemon
    /// does not listen), and this connection, with the same 4-tuple, is someone else's.
    ForeignNetns {
        /// The record's network namespace cookie.
        record: u64,
        /// The daemon's (`None`: unknown, so no loopback record can be believed).
        own: Option<u64>,
    },
}

/// Whether to believe `record`, found for a connection accepted on `local`, at `now`
/// (`CLOCK_MONOTONIC`); `own_netns` is the daemon's network namespace cookie.
pub fn judge(
    record: Record,
    local: SocketAddr,
    own_netns: Option<u64>,
    now: Option<Duration>,
) -> Result<KernelRecord, Distrust> {
    if !now.is_some_and(|now| is_fresh(record.connected_ns, now)) {
        return Err(Distrust::Stale);
    }
    // Loopback addresses exist in every network namespace: only a record made in ours can
    // describe a connection to ours. Other targets are one host address, reached by routing.
    if local.ip().to_canonical().is_loopback() && own_netns != Some(record.netns_cookie) {
        return Err(Distrust::ForeignNetns {
            record: record.netns_cookie,
            own: own_netns,
        });
    }
    Ok(record.into())
}

/// The map key of a connection the daemon accepted (`peer` → `local`).
enum Key {
    V4(Conn4),
    V6(Conn6),
}

fn words(ip: std::net::Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn key(peer: SocketAddr, local: SocketAddr) -> Option<Key> {
    match (peer.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => Some(Key::V4(Conn4 {
            peer_addr: u32::from_ne_bytes(p.octets()),
            local_addr: u32::from_ne_bytes(l.octets()),
            peer_port: peer.port(),
            local_port: local.port(),
        })),
        (IpAddr::V6(p), IpAddr::V6(l)) => Some(Key::V6(Conn6 {
            peer_addr: words(p),
            local_addr: words(l),
            peer_port: peer.port(),
            local_port: local.port(),
        })),
        _ => None,
    }
}

impl ConnTable {
    pub(super) fn new(
        v4: HashMap<MapData, Conn4, Record>,
        v6: HashMap<MapData, Conn6, Record>,
        own_netns: Option<u64>,
    ) -> Self {
        Self {
            v4: Mutex::new(v4),
            v6: Mutex::new(v6),
            own_netns,
        }
    }

    /// The kernel's record of the connection `peer` → `local`, removed from the table.
    ///
    /// `None` for connections that were not redirected (callers that reached the daemon
    /// directly), and for records not to be believed ([`judge`]; logged).
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<KernelRecord> {
        let record = match key(peer, local)? {
            Key::V4(k) => take_one(&self.v4, &k),
            Key::V6(k) => take_one(&self.v6, &k),
        }?;
        match judge(record, local, self.own_netns, monotonic_now()) {
            Ok(caller) => Some(caller),
            Err(Distrust::Stale) => {
                tracing::warn!(
                    cgroup = record.cgroup_id,
                    "ignoring a stale redirect record (its connection was never accepted in time)"
                );
                None
            }
            Err(Distrust::ForeignNetns {
                record: theirs,
                own,
            }) => {
                tracing::warn!(
                    peer = %peer,
                    local = %local,
                    cgroup = record.cgroup_id,
                    record_netns = theirs,
                    own_netns = ?own,
                    "refusing a redirect record from another network namespace for a connection to our loopback: it describes another connection with the same addresses"
                );
                None
            }
        }
    }

    /// How many entries the IPv4 and IPv6 maps hold, counting at most `limit` of each.
    ///
    /// Counting is one system call per entry (a full map is `EBPF_MAP_SIZE` calls), so it goes
    /// through handles of its own — a duplicate of each map's descriptor, taken under the lock
    /// for a moment — and never holds the lock [`ConnTable::take`] (the accept loop) needs.
    /// Blocking: call it off the async runtime. A map that cannot be read counts as 0.
    pub fn occupancy(&self, limit: usize) -> (usize, usize) {
        (count(&self.v4, limit), count(&self.v6, limit))
    }

    /// Removes the records of connections made before `since` (`CLOCK_MONOTONIC`, taken before
    /// our listener was bound): nobody accepted them while no daemon ran. Younger records belong
    /// to connections already waiting in our listener's backlog and must stay for `accept()`.
    pub fn clear_before(&self, since: Duration) -> usize {
        clear_one(&self.v4, since) + clear_one(&self.v6, since)
    }
}

/// The oldest record trusted at `accept()`: a connection attempt lasts at most the SYN retries
/// (`tcp_syn_retries` = 6 gives 127 s). An older record belongs to a connection that was never
/// accepted; its 4-tuple may since have been reused by a caller that was not redirected.
pub const MAX_RECORD_AGE: Duration = Duration::from_secs(130);

/// `CLOCK_MONOTONIC` now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .ok()
        .map(Duration::from)
}

/// Whether a record made at `connected_ns` is young enough at `now` to be believed.
pub fn is_fresh(connected_ns: u64, now: Duration) -> bool {
    now.checked_sub(Duration::from_nanos(connected_ns))
        .is_some_and(|age| age <= MAX_RECORD_AGE)
}

fn take_one<K: aya::Pod>(map: &Mutex<HashMap<MapData, K, Record>>, k: &K) -> Option<Record> {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let record = map.get(k, 0).ok()?;
    // Removal failing (already evicted) changes nothing for this caller.
    let _ = map.remove(k);
    Some(record)
}

fn count<K: aya::Pod>(map: &Mutex<HashMap<MapData, K, Record>>, limit: usize) -> usize {
    let fd = {
        let map = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.map().fd().as_fd().try_clone_to_owned()
    };
    let own = fd
        .map_err(|e| e.to_string())
        .and_then(|fd| MapData::from_fd(fd).map_err(|e| e.to_string()))
        .and_then(|data| aya::maps::Map::from_map_data(data).map_err(|e| e.to_string()))
        .and_then(|map| HashMap::<MapData, K, Record>::try_from(map).map_err(|e| e.to_string()));
    match own {
        // Keys deleted while they are walked restart the walk: `limit` bounds it either way.
        Ok(own) => own.keys().take(limit).flatten().count(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a second handle on a connection map to count it");
            0
        }
    }
}

/// Whether a record made at `connected_ns` predates `since` (a record without a time does).
pub fn predates(connected_ns: u64, since: Duration) -> bool {
    Duration::from_nanos(connected_ns) < since
}

fn clear_one<K: aya::Pod>(map: &Mutex<HashMap<MapData, K, Record>>, since: Duration) -> usize {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            map.get(k, 0)
                .map_or(true, |r| predates(r.connected_ns, since))
        })
        .collect();
    keys.iter().filter(|k| map.remove(k).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_older_than_a_connection_attempt_are_stale() {
        const SEC: u64 = 1_000_000_000;
        let now = Duration::from_secs(10_000);
        let now_ns = 10_000 * SEC;
        let max_ns = MAX_RECORD_AGE.as_secs() * SEC;
        assert!(is_fresh(now_ns - 5_000_000, now));
        assert!(is_fresh(now_ns - max_ns, now));
        assert!(!is_fresh(now_ns - max_ns - SEC, now));
        assert!(
            !is_fresh(0, now),
            "a record without a time is never trusted"
        );
        assert!(
            !is_fresh(now_ns + SEC, now),
            "a record from the future is not trusted"
        );
    }

    #[test]
    fn restart_keeps_records_of_connections_already_in_the_backlog() {
        // Regression: a restarted daemon cleared every record, including those of connections
        // made after it bound its listener (waiting in its backlog), so those callers got 404.
        let since = Duration::from_secs(100);
        assert!(
            predates(99_999_999_999, since),
            "before the listener: stale"
        );
        assert!(!predates(100_000_000_000, since), "in the backlog: kept");
        assert!(!predates(101_000_000_000, since));
        assert!(predates(0, since), "a record without a time is never kept");
    }

    fn record(netns_cookie: u64, connected_ns: u64) -> Record {
        Record {
            cgroup_id: 42,
            pid_tgid: 7 << 32,
            netns_cookie,
            connected_ns,
            orig_port: 80,
            pad: [0; 6],
        }
    }

    #[test]
    fn a_loopback_connection_is_believed_only_with_a_record_from_our_netns() {
        // Regression (issue 11, item 5): a caller in its own netns sent to *its* [::1]:PORT left
        // a record that a host process reusing the same ports then borrowed.
        let now = Some(Duration::from_secs(1_000));
        let young = 999_000_000_000;
        let ours = Some(5);
        for local in ["[::1]:45001", "127.0.0.1:45001", "[::ffff:127.0.0.1]:45001"] {
            let local: SocketAddr = local.parse().unwrap();
            assert_eq!(
                judge(record(5, young), local, ours, now).map(|c| c.cgroup_id),
                Ok(42),
                "{local}"
            );
            assert_eq!(
                judge(record(6, young), local, ours, now),
                Err(Distrust::ForeignNetns {
                    record: 6,
                    own: ours
                }),
                "{local}"
            );
            assert!(
                judge(record(5, young), local, None, now).is_err(),
                "own cookie unknown: {local} fails closed"
            );
        }
        // A host address is one address whatever the caller's namespace.
        let link: SocketAddr = "169.254.170.45:45001".parse().unwrap();
        assert!(judge(record(6, young), link, ours, now).is_ok());
        assert!(judge(record(6, young), link, None, now).is_ok());
    }

    #[test]
    fn stale_records_are_not_believed_whatever_their_netns() {
        let local: SocketAddr = "169.254.170.45:45001".parse().unwrap();
        let now = Some(Duration::from_secs(1_000));
        assert_eq!(
            judge(record(5, 1), local, Some(5), now),
            Err(Distrust::Stale)
        );
        assert_eq!(
            judge(record(5, 999_000_000_000), local, Some(5), None),
            Err(Distrust::Stale),
            "no clock: nothing is believed"
        );
    }

    #[test]
    fn v4_key_is_network_order_addresses_and_host_order_ports() {
        let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.1]:45001".parse().unwrap();
        let Some(Key::V4(k)) = key(peer, local) else {
            panic!("expected an IPv4 key");
        };
        assert_eq!(k.peer_addr.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(k.local_addr.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((k.peer_port, k.local_port), (40000, 45001));
    }

    #[test]
    fn a_caller_is_the_records_cgroup_tgid_and_netns() {
        // `bpf_get_current_pid_tgid()`: the tgid (the process id) is the upper half.
        let caller = KernelRecord::from(Record {
            pid_tgid: (4242 << 32) + 4243,
            ..record(9, 1)
        });
        assert_eq!(
            caller,
            KernelRecord {
                cgroup_id: 42,
                pid: 4242,
                netns_cookie: 9
            }
        );
    }

    #[test]
    fn v6_key_words_are_the_addresses_bytes_in_order() {
        let ip: std::net::Ipv6Addr = "102:304:506:708:90a:b0c:d0e:f10".parse().unwrap();
        let peer = SocketAddr::new(ip.into(), 1);
        let local: SocketAddr = "[fd00:ec2::254]:2".parse().unwrap();
        let Some(Key::V6(k)) = key(peer, local) else {
            panic!("expected an IPv6 key");
        };
        let bytes: Vec<u8> = k.peer_addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, (1..=16).collect::<Vec<u8>>());
        assert_eq!((k.peer_port, k.local_port), (1, 2));
        // Mixed families (never produced by one socket) have no key.
        assert!(key(peer, "127.0.0.1:1".parse().unwrap()).is_none());
    }

    #[test]
    fn v6_key_words_keep_byte_order() {
        let peer: SocketAddr = "[fd00:ec2::254]:1".parse().unwrap();
        let Some(Key::V6(k)) = key(peer, peer) else {
            panic!("expected an IPv6 key");
        };
        assert_eq!(k.peer_addr[0].to_ne_bytes(), [0xfd, 0, 0x0e, 0xc2]);
        assert_eq!(k.peer_addr[3].to_ne_bytes(), [0, 0, 0x02, 0x54]);
    }
}
