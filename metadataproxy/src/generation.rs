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
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bump_moves_the_count() {
        let before = super::current();
        super::bump();
        assert_ne!(super::current(), before);
    }
}
