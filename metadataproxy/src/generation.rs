//! One counter bumped by every change that can alter which role or credentials a caller gets.
//!
//! What remembers an answer (a connection's last credentials, `imds/memo.rs`) notes the counter
//! before it looks anything up, and trusts what it remembered only while the counter has not
//! moved. Bumped after the change is in place: a reader that saw the old state also saw the old
//! count.

use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current count. Read it before looking up what it is to vouch for.
pub fn current() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Something that decides a caller's role or credentials changed (call after the change).
pub fn bump() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    #[cfg(test)]
    BUMPS_HERE.with(|n| n.set(n.get() + 1));
}

#[cfg(test)]
thread_local! {
    /// Bumps made by this thread: a test's own, whatever other tests bump meanwhile.
    static BUMPS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many bumps the calling thread has made (tests: a change that must bump, checked
/// without being fooled by the bumps of tests running beside it).
#[cfg(test)]
pub fn bumps_on_this_thread() -> u64 {
    BUMPS_HERE.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bump_moves_the_count() {
        let (before, here) = (super::current(), super::bumps_on_this_thread());
        super::bump();
        assert_ne!(super::current(), before);
        assert_eq!(super::bumps_on_this_thread(), here + 1);
    }
}
