//! The containers a runtime runs but could not describe: left out of the index (fail closed:
//! their callers get nothing), asked about again (soon, then at least once per liveness
//! interval), logged once each.

use std::collections::HashMap;

use super::container::short;
use super::source::SourceError;

/// Container ids and how many times in a row each could not be described.
#[derive(Debug, Default)]
pub struct Unreadable {
    failures: HashMap<String, u32>,
}

impl Unreadable {
    /// `id` could not be described (`error`): the first time, a warning says so and what it
    /// costs; later times are debug lines.
    pub fn note(&mut self, runtime: &str, id: &str, error: &SourceError) {
        let count = self.failures.entry(id.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        if *count == 1 {
            tracing::warn!(runtime, id = short(id), error = %error, "{runtime} runs a container it cannot describe: it is left out of the index, so its callers get no credentials; asked again soon, then at least every liveness interval");
        } else {
            tracing::debug!(runtime, id = short(id), error = %error, attempts = *count, "container still cannot be described");
        }
    }

    /// `id` was described, or is gone: no longer unreadable. Whether it was.
    pub fn forget(&mut self, runtime: &str, id: &str, described: bool) -> bool {
        let Some(attempts) = self.failures.remove(id) else {
            return false;
        };
        if described {
            tracing::info!(
                runtime,
                id = short(id),
                attempts,
                "container described after all"
            );
        }
        true
    }

    /// Whether `id` is unreadable now.
    pub fn contains(&self, id: &str) -> bool {
        self.failures.contains_key(id)
    }

    /// The unreadable ids.
    pub fn ids(&self) -> Vec<String> {
        self.failures.keys().cloned().collect()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> SourceError {
        SourceError::Unreadable {
            call: "GET /containers/{id}/json",
            id: "a".repeat(64),
            source: "Docker responded with status code 500: boom".into(),
        }
    }

    #[test]
    fn notes_each_container_once_and_forgets_it_when_described_or_gone() {
        let mut set = Unreadable::default();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        set.note("Docker", &a, &error());
        set.note("Docker", &a, &error());
        set.note("Docker", &b, &error());
        assert_eq!(set.len(), 2);
        assert_eq!(set.failures[&a], 2);
        assert!(set.contains(&a) && set.contains(&b));
        assert!(set.forget("Docker", &a, true));
        assert!(!set.forget("Docker", &a, true), "forgotten already");
        assert!(set.forget("Docker", &b, false));
        assert!(set.is_empty() && set.ids().is_empty());
    }

    #[test]
    fn its_error_names_the_call_and_the_short_id() {
        assert_eq!(
            error().to_string(),
            "GET /containers/{id}/json for container aaaaaaaaaaaa failed: Docker responded with status code 500: boom"
        );
        assert!(error().is_about_one_container());
        assert!(!SourceError::StreamEnded.is_about_one_container());
    }
}
