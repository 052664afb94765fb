//! Samples from one load run, and medians across rounds.

use std::time::Duration;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Completed operations (answered 200).
    pub ops: u64,
    /// Operations per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Failed operations (connection errors, timeouts, non-200 answers).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// IMDSv2 sequences where the server refused the token `PUT` (the SDK then falls back to IMDSv1).
    pub token_refused: u64,
    /// The server's CPU time (user + system, all its threads and processes) per completed
    /// operation, microseconds.
    pub cpu_us_per_op: f64,
    /// The share of the machine's CPU time the host gave to others during the run (steal).
    pub stolen: f64,
}

impl Sample {
    /// A sample from every operation's latency (microseconds) over `elapsed`.
    pub fn from_latencies(mut latencies_us: Vec<u32>, elapsed: Duration) -> Self {
        latencies_us.sort_unstable();
        let ops = latencies_us.len() as u64;
        Self {
            ops,
            rps: per_second(ops, elapsed),
            p50_us: percentile(&latencies_us, 50.0),
            p99_us: percentile(&latencies_us, 99.0),
            ..Self::default()
        }
    }
}

/// `count` per second over `elapsed`.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "request counts are far below 2^52"
    )]
    let count = count as f64;
    count / elapsed.as_secs_f64().max(1e-9)
}

/// The `p`th percentile (nearest rank) of sorted values; 0 when empty.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within a slice's length"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (mean of the middle two when even); 0 when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert!((percentile(&v, 50.0) - 50.0).abs() < f64::EPSILON);
        assert!((percentile(&v, 99.0) - 99.0).abs() < f64::EPSILON);
        assert!((percentile(&[7], 99.0) - 7.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 50.0).abs() < f64::EPSILON);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert!((median([3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median([4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
        assert!(median([]).abs() < f64::EPSILON);
    }
}
