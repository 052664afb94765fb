//! Time as a dependency: the real clock in production, a hand-driven one in tests and fuzzing.

use std::time::{Instant, SystemTime};

#[cfg(any(test, feature = "fuzzing"))]
pub use manual::ManualClock;

/// A source of wall-clock and monotonic time.
///
/// Credential expiry is wall-clock (STS returns timestamps); token expiry is monotonic.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Wall-clock now.
    fn now(&self) -> SystemTime;
    /// Monotonic now.
    fn monotonic(&self) -> Instant;
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// The hand-driven clock: built for unit tests and the fuzz entry points (the `fuzzing` feature),
/// never into the daemon.
#[cfg(any(test, feature = "fuzzing"))]
mod manual {
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant, SystemTime};

    use super::Clock;

    /// A clock that only moves when told to; both readings advance together.
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        inner: Arc<Mutex<(SystemTime, Instant)>>,
    }

    impl ManualClock {
        /// A clock starting at the given wall-clock time.
        pub fn new(start: SystemTime) -> Self {
            Self {
                inner: Arc::new(Mutex::new((start, Instant::now()))),
            }
        }

        /// Moves both readings forward.
        pub fn advance(&self, by: Duration) {
            let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            t.0 += by;
            t.1 += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            self.inner.lock().unwrap_or_else(PoisonError::into_inner).0
        }
        fn monotonic(&self) -> Instant {
            self.inner.lock().unwrap_or_else(PoisonError::into_inner).1
        }
    }
}
