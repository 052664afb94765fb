//! The egress guard's and the connect programs' refusals, seen from user space: per-family
//! counters for `/metrics` and a rate-limited warn line naming the cgroup that sent the last one.
//!
//! The kernel counts in a pinned per-CPU array (`MP_COUNTERS`: no contention, no lost updates); a
//! thread of its own sums it every [`POLL`] and adds what is new to the daemon's counters. A
//! restarted daemon reads its predecessor's pinned counts: the totals run since the guard was
//! first pinned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{Array, MapData, PerCpuArray};
use metadataproxy_common::{DropSample, counters, maps};

use super::EbpfError;
use crate::cgroup::CgroupPaths;

/// How often the counters are read.
pub const POLL: Duration = Duration::from_secs(1);
/// At most one warn line per this long (the line counts what happened since the last one).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the kernel counted (totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// IPv4 packets to a metadata address dropped.
    pub dropped4: u64,
    /// IPv6 packets to a metadata address dropped.
    pub dropped6: u64,
    /// IPv4 connects to a metadata address refused.
    pub refused4: u64,
    /// IPv6 connects to a metadata address refused.
    pub refused6: u64,
}

impl Counts {
    /// What `self` adds to `earlier` (a counter never goes back; a smaller one was reset).
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        let d = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        Self {
            dropped4: d(self.dropped4, earlier.dropped4),
            dropped6: d(self.dropped6, earlier.dropped6),
            refused4: d(self.refused4, earlier.refused4),
            refused6: d(self.refused6, earlier.refused6),
        }
    }

    /// Everything counted.
    pub fn total(self) -> u64 {
        self.dropped4 + self.dropped6 + self.refused4 + self.refused6
    }
}

/// The pinned `MP_COUNTERS` and `MP_LAST_DROP` maps.
pub struct GuardStats {
    counters: PerCpuArray<MapData, u64>,
    last: Array<MapData, DropSample>,
}

impl std::fmt::Debug for GuardStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardStats").finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name)
        .ok_or(aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        })
        .map_err(map_err(name))
}

impl GuardStats {
    /// Takes the maps out of the loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        let counters =
            PerCpuArray::try_from(take(ebpf, maps::COUNTERS)?).map_err(map_err(maps::COUNTERS))?;
        let last =
            Array::try_from(take(ebpf, maps::LAST_DROP)?).map_err(map_err(maps::LAST_DROP))?;
        Ok(Self { counters, last })
    }

    fn sum(&self, index: u32) -> u64 {
        self.counters.get(&index, 0).map_or(0, |per_cpu| {
            per_cpu.iter().copied().fold(0u64, u64::wrapping_add)
        })
    }

    /// The totals now.
    pub fn read(&self) -> Counts {
        Counts {
            dropped4: self.sum(counters::DROPPED4),
            dropped6: self.sum(counters::DROPPED6),
            refused4: self.sum(counters::REFUSED4),
            refused6: self.sum(counters::REFUSED6),
        }
    }

    /// The last packet dropped or connect refused.
    pub fn last(&self) -> Option<DropSample> {
        self.last.get(&0, 0).ok().filter(|s| s.at_ns != 0)
    }

    /// Follows the counters on a thread of its own for the life of the process: adds what is new
    /// to the metrics every [`POLL`], and warns at most every [`WARN_EVERY`] (naming the cgroup,
    /// resolved through `paths`, that sent the last packet).
    pub fn spawn(self, paths: Arc<CgroupPaths>) {
        let spawned = std::thread::Builder::new()
            .name("mp-guard".to_owned())
            .spawn(move || {
                let mut seen = Counts::default();
                let mut warned = Counts::default();
                let mut last_warn: Option<Instant> = None;
                loop {
                    let now = self.read();
                    let new = now.since(seen);
                    let metrics = crate::metrics::global();
                    metrics.ebpf_guard("ipv4", new.dropped4, new.refused4);
                    metrics.ebpf_guard("ipv6", new.dropped6, new.refused6);
                    seen = now;
                    let news = now.since(warned);
                    if news.total() > 0 && last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        let cgroup = self.last().map(|s| {
                            paths
                                .resolve_blocking(s.cgroup_id)
                                .map_or_else(|| format!("id {} (gone)", s.cgroup_id), |p| p.to_string())
                        });
                        tracing::warn!(
                            dropped_ipv4 = news.dropped4,
                            dropped_ipv6 = news.dropped6,
                            refused_ipv4 = news.refused4,
                            refused_ipv6 = news.refused6,
                            last_cgroup = cgroup.as_deref().unwrap_or("unknown"),
                            "blocked traffic to the metadata service that went around the redirect (ping, UDP, raw sockets, other ports or spellings of its address)"
                        );
                        warned = now;
                        last_warn = Some(Instant::now());
                    }
                    std::thread::sleep(POLL);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the guard's counter thread: drops are not reported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_are_the_difference_and_a_reset_counts_from_zero() {
        let then = Counts {
            dropped4: 5,
            dropped6: 1,
            refused4: 0,
            refused6: 2,
        };
        let now = Counts {
            dropped4: 7,
            dropped6: 1,
            refused4: 3,
            refused6: 1,
        };
        assert_eq!(
            now.since(then),
            Counts {
                dropped4: 2,
                dropped6: 0,
                refused4: 3,
                refused6: 1,
            }
        );
        assert_eq!(now.since(then).total(), 6);
        assert_eq!(Counts::default().since(now), Counts::default());
    }
}
