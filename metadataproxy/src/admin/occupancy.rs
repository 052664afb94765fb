//! The `metadataproxy_ebpf_connection_entries` gauge: counting the connection maps costs one
//! system call per entry (up to `EBPF_MAP_SIZE` each), so it runs on a blocking thread, through
//! handles of its own (never under the lock the accept loop takes), at most once per
//! [`COUNT_INTERVAL`] however often `/metrics` is scraped: scrapes in between, and scrapes
//! arriving while a count runs, get the last count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ebpf::ConnTable;
use crate::metrics::MapOccupancy;

/// Shortest time between two counts of the maps.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// Counts the connection maps for the scrape-time gauges.
#[derive(Debug)]
pub struct Occupancy {
    table: Arc<ConnTable>,
    capacity: usize,
    last: tokio::sync::Mutex<Option<(Instant, MapOccupancy)>>,
}

impl Occupancy {
    /// Counts `table`, whose maps hold at most `capacity` entries each.
    pub fn new(table: Arc<ConnTable>, capacity: usize) -> Self {
        Self {
            table,
            capacity,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The maps' entries, counted now unless a count is under way or younger than
    /// [`COUNT_INTERVAL`].
    pub async fn get(&self) -> Option<MapOccupancy> {
        let mut last = self.last.lock().await;
        if let Some((at, counted)) = *last
            && at.elapsed() < COUNT_INTERVAL
        {
            return Some(counted);
        }
        let (table, capacity) = (Arc::clone(&self.table), self.capacity);
        let counted = tokio::task::spawn_blocking(move || {
            let (v4, v6) = table.occupancy(capacity);
            MapOccupancy { v4, v6, capacity }
        })
        .await
        .ok()?;
        *last = Some((Instant::now(), counted));
        Some(counted)
    }
}
