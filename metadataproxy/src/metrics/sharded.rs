//! Counters and a latency histogram that every request updates, split in per-thread shards so
//! that the runtime's worker threads do not pass the same cache lines (or, for prometheus-client's
//! histogram, a lock) back and forth on every request. Summed when scraped; exposed exactly as
//! prometheus-client's own `Counter` and `Histogram`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per metric: at least the worker threads of a busy node's runtime.
const SHARDS: usize = 16;

/// One shard on a cache line of its own (128 bytes: adjacent-line prefetch pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The shard of the calling thread: threads take shards in turn as they first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    // A thread counting while its thread-locals are torn down shares the first shard.
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// A monotonic counter.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total over every shard.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Bucket bounds of [`LatencyHistogram`] in nanoseconds: 100 µs × 4ⁿ, n = 0..9 (100 µs to about
/// 6.5 s), and +Inf.
const BOUNDS_NS: [u64; 9] = {
    let mut b = [0; 9];
    let mut i = 0;
    let mut v = 100_000;
    while i < 9 {
        b[i] = v;
        v *= 4;
        i += 1;
    }
    b
};
const BUCKETS: usize = BOUNDS_NS.len() + 1;

#[derive(Debug, Default)]
struct HistogramShard {
    count: AtomicU64,
    /// Nanoseconds: an integer sum needs no compare-and-swap loop, and loses nothing.
    sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A latency histogram with the buckets of `exponential_buckets(0.0001, 4.0, 9)`.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<[Padded<HistogramShard>; SHARDS]>);

impl LatencyHistogram {
    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.0[shard()].0;
        let bucket = BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(BUCKETS - 1);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and per-bucket (not cumulative) counts with their upper bounds.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum_ns: u128 = 0;
        let mut count = 0;
        // The bounds as prometheus-client writes them (its series keep their labels).
        let mut buckets: Vec<(f64, u64)> = exponential_buckets(0.000_1, 4.0, 9)
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        for shard in self.0.iter() {
            let shard = &shard.0;
            count += shard.count.load(Ordering::Relaxed);
            sum_ns += u128::from(shard.sum_ns.load(Ordering::Relaxed));
            for (total, n) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += n.load(Ordering::Relaxed);
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "a sum of seconds, as an f64")]
        let sum = sum_ns as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    use super::*;

    fn exposed(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    /// Counts from many threads, read as the same exposition prometheus-client's `Counter` gives.
    #[test]
    fn a_counter_counts_across_threads_as_prometheus_clients_does() {
        let sharded = ShardedCounter::default();
        let plain = Counter::<u64>::default();
        std::thread::scope(|s| {
            for _ in 0..(SHARDS + 3) {
                s.spawn(|| {
                    for _ in 0..1000 {
                        sharded.inc();
                        plain.inc();
                    }
                });
            }
        });
        assert_eq!(sharded.get(), 1000 * (SHARDS as u64 + 3));
        assert_eq!(
            exposed(|r| r.register("c", "help", sharded.clone())),
            exposed(|r| r.register("c", "help", plain.clone()))
        );
    }

    /// Observations on several threads give prometheus-client's own histogram exposition,
    /// bucket bounds included (each value on a bound falls in that bound's bucket, as there).
    #[test]
    fn the_histogram_matches_prometheus_clients() {
        let sharded = LatencyHistogram::default();
        let plain = Histogram::new(exponential_buckets(0.000_1, 4.0, 9));
        let values: Vec<Duration> = BOUNDS_NS
            .iter()
            .flat_map(|ns| [ns - 1, *ns, ns + 1])
            .chain([0, 1, 10_000_000_000])
            .map(Duration::from_nanos)
            .collect();
        std::thread::scope(|s| {
            for chunk in values.chunks(4) {
                let sharded = &sharded;
                s.spawn(move || chunk.iter().for_each(|v| sharded.observe(*v)));
            }
        });
        for v in &values {
            plain.observe(v.as_secs_f64());
        }
        let ours = exposed(|r| r.register("h", "help", sharded.clone()));
        let theirs = exposed(|r| r.register("h", "help", plain.clone()));
        // The sums differ in the last digits (nanoseconds added as integers, not as f64).
        let strip = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with("h_sum"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(strip(&ours), strip(&theirs), "{ours}\n---\n{theirs}");
        let sum: f64 = values.iter().map(Duration::as_secs_f64).sum();
        let (ours_sum, count, _) = sharded.snapshot();
        assert_eq!(count, values.len() as u64);
        assert!((ours_sum - sum).abs() < 1e-9, "{ours_sum} vs {sum}");
    }
}
/// Not a check: what sharding saves when two threads update the same series at once, printed
/// side by side with prometheus-client's own types (BENCHMARKS.md quotes it). Run with
/// `cargo test --release -p metadataproxy --lib -- --ignored contended_updates --nocapture`.
#[cfg(test)]
mod contention {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    const N: u32 = 5_000_000;

    /// Wall-clock nanoseconds per update, two threads updating `update` at once.
    fn per_update(update: &(dyn Fn(u32) + Sync)) -> f64 {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| (0..N).for_each(update));
            }
        });
        start.elapsed().as_secs_f64() * 1e9 / f64::from(N)
    }

    #[test]
    #[ignore = "a benchmark: run it by name, in release"]
    fn contended_updates() {
        for round in 1..=3 {
            let plain = Histogram::new(exponential_buckets(0.000_1, 4.0, 9));
            let ours = LatencyHistogram::default();
            let plain_counter = Counter::<u64>::default();
            let our_counter = ShardedCounter::default();
            let h_plain = per_update(&|i| plain.observe(f64::from(i % 1000) * 1e-6));
            let h_ours = per_update(&|i| ours.observe(Duration::from_micros(u64::from(i % 1000))));
            let c_plain = per_update(&|_| {
                plain_counter.inc();
            });
            let c_ours = per_update(&|_| our_counter.inc());
            println!(
                "round {round}: histogram {h_plain:.1} ns (prometheus-client) vs {h_ours:.1} ns \
                 (sharded); counter {c_plain:.1} ns vs {c_ours:.1} ns"
            );
        }
    }
}
