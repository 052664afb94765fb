//! The role policy as the request path and the prefetchers ask it: no policy allows everything
//! (behaviour as without the feature); a policy's refusal is counted, and explained in one line.

use std::sync::Arc;

use super::{Decision, PolicyFile, Subject};
use crate::role::RoleArn;

/// Why the policy refused a role: the rule that decided and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The rule that denied it, or `(none)` when no rule allows it.
    pub rule: String,
    /// The decision in words.
    pub why: String,
}

/// The role policy in force, if one is configured (`ROLE_POLICY_FILE`).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    file: Option<Arc<PolicyFile>>,
}

impl Gate {
    /// A gate over `file` (`None`: every role is allowed).
    pub fn new(file: Option<Arc<PolicyFile>>) -> Self {
        Self { file }
    }

    /// Whether a policy is configured.
    pub fn is_on(&self) -> bool {
        self.file.is_some()
    }

    /// Whether the caller `s` may assume `arn` (`arn_text` is the ARN written out); a refusal
    /// is counted in `metadataproxy_role_policy_refusals_total`. Allocates only to refuse.
    pub fn check(&self, s: &Subject<'_>, arn: &RoleArn, arn_text: &str) -> Result<(), Refused> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let policy = file.current();
        let decision = policy.decide(s, arn, arn_text);
        if decision.is_allowed() {
            return Ok(());
        }
        crate::metrics::policy_refused(match decision {
            Decision::Denied(_) => "denied",
            _ => "not_allowed",
        });
        Err(Refused {
            rule: decision.rule().to_owned(),
            why: decision.to_string(),
        })
    }
}
