//! The log lines of identification refusals, one function per kind, so that every such line is
//! written (and can be rate-limited) in one place. A caller controls how often it is refused:
//! the lines a caller can repeat at will go through a [`Gate`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two lines of a gated kind.
pub const GATE_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one line through per [`GATE_INTERVAL`], counting the ones held back meanwhile.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<Option<(Instant, u64)>>,
}

impl Gate {
    /// A gate that lets the first line through.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(None),
        }
    }

    /// `Some(n)`: write the line now, `n` lines were held back since the last one; `None`: hold
    /// it back.
    pub fn pass(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *state {
            Some((last, held)) if now.saturating_duration_since(*last) < GATE_INTERVAL => {
                *held = held.saturating_add(1);
                None
            }
            Some((last, held)) => {
                let suppressed = *held;
                *last = now;
                *held = 0;
                Some(suppressed)
            }
            None => {
                *state = Some((now, 0));
                Some(0)
            }
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

static RECORD_LESS: Gate = Gate::new();

/// A caller's cgroup names a container (`runtime`, `container` named `name`) but is neither the
/// cgroup recorded for that container nor below it: it imitates the container and gets nothing.
pub fn look_alike(cgroup: &str, runtime: &str, name: &str, container: &str, pid: u32) {
    tracing::warn!(
        cgroup,
        runtime,
        container = name,
        id = container,
        pid,
        "refused: the caller's cgroup names a container but is not that container's cgroup nor below it (a look-alike); no credentials"
    );
}

/// A caller's cgroup names a container whose own cgroup could not be verified when it was
/// indexed (see the `cannot be identified by its cgroup` line): nothing is given by cgroup.
pub fn unverified(cgroup: &str, runtime: &str, name: &str, container: &str, pid: u32) {
    tracing::warn!(
        cgroup,
        runtime,
        container = name,
        id = container,
        pid,
        "refused: the caller's cgroup names a container whose own cgroup could not be verified; no credentials"
    );
}

/// A connection that did not come through the eBPF redirect (no kernel record) asked for a route
/// that needs the caller's identity, and its address is not in `EBPF_DIRECT_CALLERS`. Gated: at
/// most one line per [`GATE_INTERVAL`], with the count of the lines held back.
pub fn record_less(peer: SocketAddr, route: &'static str) {
    if let Some(suppressed) = RECORD_LESS.pass(Instant::now()) {
        tracing::info!(
            %peer,
            route,
            suppressed,
            "refused with 403: the connection did not come through the eBPF redirect (no kernel record of its caller), and its address is not in EBPF_DIRECT_CALLERS"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_lets_one_line_through_per_interval_and_counts_the_rest() {
        let gate = Gate::new();
        let t0 = Instant::now();
        assert_eq!(gate.pass(t0), Some(0));
        assert_eq!(gate.pass(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            gate.pass(t0 + GATE_INTERVAL.saturating_sub(Duration::from_millis(1))),
            None
        );
        assert_eq!(gate.pass(t0 + GATE_INTERVAL), Some(2));
        assert_eq!(gate.pass(t0 + GATE_INTERVAL), None);
        assert_eq!(gate.pass(t0 + GATE_INTERVAL * 3), Some(1));
    }
}
