//! Per-credential-set delivery state: the document rendered once, and which callers already got it.
//!
//! Every request for cached credentials serves the same bytes, so they are rendered once; and the
//! audit log records each (caller, credential set) pair once instead of once per request.

use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use crate::caller::Identity;

/// Most distinct recipients remembered per credential set; beyond it the list starts over (a
/// caller may then be audited twice for one set, never zero times).
const MAX_RECIPIENTS: usize = 256;

/// Delivery state of one credential set. Clones start empty.
#[derive(Default)]
pub struct Delivery {
    document: OnceLock<Bytes>,
    recipients: Mutex<Vec<Identity>>,
}

impl Delivery {
    /// The served document, rendered by `render` on first use.
    pub fn document(&self, render: impl FnOnce() -> Bytes) -> Bytes {
        self.document.get_or_init(render).clone()
    }

    /// Records `caller` as a recipient; `true` the first time it is recorded.
    pub fn first_for(&self, caller: &Identity) -> bool {
        let mut recipients = self
            .recipients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recipients.contains(caller) {
            return false;
        }
        if recipients.len() >= MAX_RECIPIENTS {
            recipients.clear();
        }
        recipients.push(caller.clone());
        true
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The document holds the secrets: never printed.
        f.write_str("Delivery { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_once_and_never_prints_the_document() {
        let d = Delivery::default();
        assert_eq!(
            d.document(|| Bytes::from_static(b"secret-doc")),
            "secret-doc"
        );
        assert_eq!(d.document(|| unreachable!("rendered twice")), "secret-doc");
        assert!(!format!("{d:?}").contains("secret"));
    }

    #[test]
    fn each_recipient_is_first_once() {
        let d = Delivery::default();
        let a = Identity::Cgroup(1);
        let b = Identity::Cgroup(2);
        assert!(d.first_for(&a));
        assert!(!d.first_for(&a));
        assert!(d.first_for(&b));
        assert!(d.clone().first_for(&a), "a clone starts empty");
    }
}
