//! The daemon's budget of `sts:AssumeRole` calls: at most N a second, spaced evenly, and a waiting
//! caller's call always goes before any prefetch or background refresh.
//!
//! A token bucket holding one token, refilled every `1/N` s: two calls never start closer than
//! that, so no window of one second sees more than N (a bucket holding N would let a quiet node
//! send 2N within one second). Calls that find the bucket empty queue; one dispatcher task hands
//! each new token to the oldest urgent waiter, else to the oldest waiter. A background call whose
//! result a caller starts waiting for is made urgent on the spot ([`Ticket::promote`]).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// The priority of one STS call; shared by the call and every caller that waits for it.
#[derive(Debug, Default)]
pub struct Ticket {
    urgent: AtomicBool,
    promoted: Notify,
}

impl Ticket {
    /// A call a caller waits for (`urgent`), or a prefetch or refresh.
    pub fn new(urgent: bool) -> Arc<Self> {
        Arc::new(Self {
            urgent: AtomicBool::new(urgent),
            promoted: Notify::new(),
        })
    }

    /// Whether a caller waits for this call.
    pub fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Acquire)
    }

    /// A caller now waits for this call: it goes before background calls from now on.
    pub fn promote(&self) {
        if !self.urgent.swap(true, Ordering::AcqRel) {
            self.promoted.notify_one();
        }
    }

    /// Completes once the call is urgent.
    pub async fn promoted(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so a promotion between the check and
        // the wait is not lost.
        if !self.is_urgent() {
            self.promoted.notified().await;
        }
    }
}

struct Waiter {
    ticket: Arc<Ticket>,
    go: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    /// Earliest start of the next call.
    next: Option<Instant>,
    queue: VecDeque<Waiter>,
    dispatching: bool,
}

/// The budget; see the module documentation.
pub struct StsBudget {
    per_second: NonZeroU32,
    spacing: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for StsBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsBudget")
            .field("per_second", &self.per_second)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl StsBudget {
    /// At most `per_second` calls a second.
    pub fn new(per_second: NonZeroU32) -> Arc<Self> {
        Arc::new(Self {
            per_second,
            spacing: Duration::from_secs(1) / per_second.get(),
            state: Mutex::default(),
        })
    }

    /// The cap.
    pub fn per_second(&self) -> NonZeroU32 {
        self.per_second
    }

    /// Calls waiting for their turn.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the call holding `ticket` may start. Returns whether it had to wait.
    pub async fn acquire(self: &Arc<Self>, ticket: &Arc<Ticket>) -> bool {
        let go = {
            let mut st = self.lock();
            let now = Instant::now();
            if st.queue.is_empty() && st.next.is_none_or(|t| t <= now) {
                st.next = Some(now + self.spacing);
                return false;
            }
            let (go, wait) = oneshot::channel();
            st.queue.push_back(Waiter {
                ticket: Arc::clone(ticket),
                go,
            });
            if !st.dispatching {
                st.dispatching = true;
                tokio::spawn(Arc::clone(self).dispatch());
            }
            wait
        };
        // The dispatcher never drops a waiter without sending; if the runtime goes away, so
        // does this call.
        let _ = go.await;
        true
    }

    /// Hands out tokens to the queue until it is empty.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let sleep_until = {
                let mut st = self.lock();
                let now = Instant::now();
                match st.next {
                    Some(t) if t > now => t,
                    _ => {
                        let pick = st
                            .queue
                            .iter()
                            .position(|w| w.ticket.is_urgent())
                            .or(if st.queue.is_empty() { None } else { Some(0) });
                        let Some(i) = pick else {
                            st.dispatching = false;
                            return;
                        };
                        if let Some(w) = st.queue.remove(i)
                            && w.go.send(()).is_ok()
                        {
                            st.next = Some(now + self.spacing);
                        }
                        continue;
                    }
                }
            };
            tokio::time::sleep_until(sleep_until).await;
        }
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
