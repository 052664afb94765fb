//! The rate limit on refusal lines: each caller may have [`PER_CALLER`] of them logged per
//! [`WINDOW`], and all callers together [`IN_ALL`]; the rest are counted
//! (`metadataproxy_log_lines_suppressed_total`), and the next line logged for that caller says how
//! many of its lines were suppressed (`suppressed=N`). A caller that goes quiet while it still has
//! suppressed lines is reported in one summary line at the next window. Memory is bounded: at
//! most [`MAX_CALLERS`] callers are tracked, later ones share one budget.
//!
//! Fixed windows: at most twice a budget in a moment around a window's start, and no timer.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::caller::Identity;

/// The window the budgets are counted over.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Refusal lines of one caller logged per window: enough to see what it does.
pub const PER_CALLER: u32 = 10;
/// Refusal lines of all callers logged per window: 300 per 30 s, far below journald's default
/// rate limit (10,000 per 30 s per service), so refusals can never push audit lines past it.
pub const IN_ALL: u32 = 100;
/// Callers tracked at once; beyond it, new callers share one budget until the next window.
pub const MAX_CALLERS: usize = 4096;

/// What the limiter says about one refusal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` of this caller's lines were not logged since its last one.
    Log {
        /// Lines suppressed before this one.
        suppressed: u64,
    },
    /// Do not log it (it is counted).
    Suppress,
}

/// A caller's budget in the current window.
#[derive(Debug, Default, Clone, Copy)]
struct Budget {
    logged: u32,
    suppressed: u64,
    /// Whether it asked in the current window.
    active: bool,
}

impl Budget {
    fn ask(&mut self, room: bool, per_caller: u32) -> Verdict {
        self.active = true;
        if room && self.logged < per_caller {
            self.logged += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    callers: HashMap<Identity, Budget>,
    /// The budget shared by callers beyond [`MAX_CALLERS`].
    overflow: Budget,
}

/// Suppressed lines of callers that went quiet, reported in one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unreported {
    /// Callers.
    pub callers: usize,
    /// Their suppressed lines.
    pub lines: u64,
}

/// The limiter (one for the daemon: [`super::refusals`]).
#[derive(Debug)]
pub struct RefusalLimiter {
    state: Mutex<State>,
    window: Duration,
    per_caller: u32,
    in_all: u32,
    max_callers: usize,
}

impl Default for RefusalLimiter {
    fn default() -> Self {
        Self::new(WINDOW, PER_CALLER, IN_ALL, MAX_CALLERS)
    }
}

impl RefusalLimiter {
    /// A limiter of `per_caller` lines per caller and `in_all` in all per `window`, tracking at
    /// most `max_callers` callers.
    pub fn new(window: Duration, per_caller: u32, in_all: u32, max_callers: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            window,
            per_caller,
            in_all,
            max_callers,
        }
    }

    /// Whether a refusal line for `caller` is logged at `now`, and the suppressed lines of callers
    /// that went quiet, if a window just ended with some.
    pub fn ask(&self, caller: &Identity, now: Instant) -> (Verdict, Option<Unreported>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let unreported = self.roll(&mut state, now);
        let room = state.logged < self.in_all;
        let full = state.callers.len() >= self.max_callers;
        let budget = match state.callers.get_mut(caller) {
            Some(budget) => budget,
            None if full => &mut state.overflow,
            None => state.callers.entry(caller.clone()).or_default(),
        };
        let verdict = budget.ask(room, self.per_caller);
        if matches!(verdict, Verdict::Log { .. }) {
            state.logged += 1;
        }
        (verdict, unreported)
    }

    /// Callers tracked now.
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .callers
            .len()
    }

    /// Starts a new window if the current one is over: budgets start again; callers with nothing
    /// owed are forgotten, and so are those that owe lines but asked nothing for a whole window
    /// (their lines are returned, to be reported in one line).
    fn roll(&self, state: &mut State, now: Instant) -> Option<Unreported> {
        if state
            .window_start
            .is_some_and(|start| now.saturating_duration_since(start) < self.window)
        {
            return None;
        }
        state.window_start = Some(now);
        state.logged = 0;
        let mut unreported = Unreported::default();
        state.callers.retain(|_, budget| {
            let keep = budget.active && budget.suppressed > 0;
            if !budget.active && budget.suppressed > 0 {
                unreported.callers += 1;
                unreported.lines += budget.suppressed;
            }
            *budget = Budget {
                suppressed: budget.suppressed,
                ..Budget::default()
            };
            keep
        });
        let overflow = std::mem::take(&mut state.overflow);
        if overflow.active {
            state.overflow.suppressed = overflow.suppressed;
        } else if overflow.suppressed > 0 {
            unreported.callers += 1;
            unreported.lines += overflow.suppressed;
        }
        (unreported.lines > 0).then_some(unreported)
    }
}

#[cfg(test)]
#[path = "refusals_tests.rs"]
mod tests;
