//! The eBPF redirect path: not yet measured. This is the hook for whoever lands the redirect.
//!
//! What to measure (issue 5): the load generator inside a redirected test cgroup calling
//! `169.254.169.254` with a new connection per request (`loadgen::Pattern::NewConnection`, 16
//! concurrent), versus the same load straight to the daemon, in alternating rounds like
//! `scenarios::run`. The generator runs in this process, so either move the whole bench process into
//! the test cgroup for the redirected rounds, or re-exec `cargo xtask` with a hidden load-generator
//! subcommand placed in the cgroup (write its pid to `cgroup.procs` before it connects). Keep every
//! packet local: make `169.254.169.254/32` a `lo` alias with a stand-in behind it (TOOLCHAIN.md), so a
//! missing redirect is seen as wrong answers instead of leaving the machine. Target: redirected ≥ 0.7×
//! direct throughput. Fill in [`EbpfPath::Measured`]; the report already prints it.

use super::stats::Sample;

/// The eBPF path's result.
#[derive(Debug)]
pub enum EbpfPath {
    /// The redirect is not measured by this bench yet.
    NotYetMeasured,
    /// Medians of the same load through the redirect and straight to the daemon.
    #[expect(dead_code, reason = "filled in when the eBPF redirect lands")]
    Measured { redirected: Sample, direct: Sample },
}

/// Measures the eBPF path where it is available; today: not yet.
pub fn measure() -> EbpfPath {
    EbpfPath::NotYetMeasured
}
