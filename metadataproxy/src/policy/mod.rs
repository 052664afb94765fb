//! The role policy (`ROLE_POLICY_FILE`): which workloads may assume which roles, decided on the
//! node from what the daemon knows of the caller — its Kubernetes namespace and pod, its
//! container's name, image and labels, its kernel-attested cgroup, and who chose its role.
//!
//! A policy is a list of rules. A rule applies to a request when its `match` holds for the
//! caller and, if it lists `accounts`, the role lives in one of them. A role is refused when an
//! applying rule `deny`s it (whatever else allows it), allowed when an applying rule `allow`s it,
//! and refused otherwise: with a policy, nothing is allowed that no rule allows.

mod gate;
mod parse;
mod pattern;

pub use gate::{Gate, Refused};
pub use parse::{PolicyError, parse, parse_bytes};
pub use pattern::{CgroupPrefix, Glob, RolePattern};

use std::collections::BTreeMap;
use std::fmt;

use crate::identity::Workload;
use crate::role::RoleArn;

pub use crate::identity::AssignedBy;
pub use crate::role::{NAMESPACE_LABEL, POD_NAME_LABEL, POD_UID_LABEL};

/// What the policy is asked about: the caller (as far as it is known) and who chose its role.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Who chose the role.
    pub assigned_by: AssignedBy,
    /// The caller's container, when it was identified through one.
    pub workload: Option<&'a Workload>,
    /// The caller's cgroup v2 path, when the kernel attested it (or the container's).
    pub cgroup: Option<&'a str>,
}

impl Subject<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.workload?.labels.get(key).map(String::as_str)
    }
}

/// Which callers a rule is about; every field given must hold (`{}` holds for every caller).
#[derive(Debug, Default)]
pub struct Selector {
    /// The pod's namespace ([`NAMESPACE_LABEL`]).
    pub namespace: Option<Glob>,
    /// The pod's name ([`POD_NAME_LABEL`]).
    pub pod: Option<Glob>,
    /// The container's name.
    pub container: Option<Glob>,
    /// The container's image, as the runtime reports it.
    pub image: Option<Glob>,
    /// Container labels that must be present, with values matching.
    pub labels: BTreeMap<String, Glob>,
    /// The caller's cgroup is this one or below it.
    pub cgroup: Option<CgroupPrefix>,
    /// Who chose the role.
    pub assigned_by: Option<Vec<AssignedBy>>,
}

impl Selector {
    /// Whether every field given holds for `s`.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        let glob = |g: &Option<Glob>, value: Option<&str>| {
            g.as_ref()
                .is_none_or(|g| value.is_some_and(|v| g.matches(v)))
        };
        glob(&self.namespace, s.label(NAMESPACE_LABEL))
            && glob(&self.pod, s.label(POD_NAME_LABEL))
            && glob(&self.container, s.workload.map(|w| w.name.as_str()))
            && glob(&self.image, s.workload.map(|w| w.image.as_str()))
            && self
                .labels
                .iter()
                .all(|(key, g)| s.label(key).is_some_and(|v| g.matches(v)))
            && self
                .cgroup
                .as_ref()
                .is_none_or(|p| s.cgroup.is_some_and(|c| p.contains(c)))
            && self
                .assigned_by
                .as_ref()
                .is_none_or(|by| by.contains(&s.assigned_by))
    }
}

/// One rule of the policy.
#[derive(Debug)]
pub struct Rule {
    /// Its name (given, or `rules[N]`), for the audit log.
    pub name: String,
    /// Which callers it is about.
    pub selector: Selector,
    /// Roles it allows.
    pub allow: Vec<RolePattern>,
    /// Roles it refuses, whatever other rules allow.
    pub deny: Vec<RolePattern>,
    /// When given, it applies only to roles of these accounts.
    pub accounts: Option<Vec<String>>,
}

impl Rule {
    /// Whether the rule applies to the caller `s` asking for `arn`.
    pub fn applies(&self, s: &Subject<'_>, arn: &RoleArn) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|a| a.iter().any(|id| id == arn.account_id()))
            && self.selector.matches(s)
    }
}

/// A parsed role policy.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What the policy says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// This rule allows it (the first that does, in file order).
    Allowed(&'p str),
    /// This rule denies it.
    Denied(&'p str),
    /// No rule allows it; this many rules applied to the caller and the role.
    NotAllowed(usize),
}

impl Decision<'_> {
    /// Whether the role may be assumed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }

    /// The rule that decided, or `(none)` when no rule allows the role.
    pub fn rule(&self) -> &str {
        match self {
            Self::Allowed(rule) | Self::Denied(rule) => rule,
            Self::NotAllowed(_) => "(none)",
        }
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed(rule) => write!(f, "allowed by rule `{rule}`"),
            Self::Denied(rule) => write!(f, "denied by rule `{rule}`"),
            Self::NotAllowed(0) => f.write_str("no rule applies to this caller and role"),
            Self::NotAllowed(n) => write!(
                f,
                "{n} rule{} appl{} to this caller, none allows the role",
                if *n == 1 { "" } else { "s" },
                if *n == 1 { "ies" } else { "y" }
            ),
        }
    }
}

impl Policy {
    /// A policy of these rules.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Its rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether the caller `s` may assume the role `arn` (written out as `arn_text`).
    pub fn decide(&self, s: &Subject<'_>, arn: &RoleArn, arn_text: &str) -> Decision<'_> {
        let mut applied = 0;
        let mut allowed = None;
        for rule in &self.rules {
            if !rule.applies(s, arn) {
                continue;
            }
            applied += 1;
            if rule.deny.iter().any(|p| p.matches(arn, arn_text)) {
                return Decision::Denied(&rule.name);
            }
            if allowed.is_none() && rule.allow.iter().any(|p| p.matches(arn, arn_text)) {
                allowed = Some(rule.name.as_str());
            }
        }
        allowed.map_or(Decision::NotAllowed(applied), Decision::Allowed)
    }
}

/// The role policy file, followed while the daemon runs.
pub type PolicyFile = crate::watched::WatchedFile<Policy>;

impl crate::watched::Watchable for Policy {
    type Error = PolicyError;
    const WHAT: &'static str = "role policy file";

    fn parse(bytes: &[u8]) -> Result<Self, PolicyError> {
        parse_bytes(bytes)
    }

    fn read_error(source: std::io::Error) -> PolicyError {
        PolicyError::Read { path: None, source }
    }

    fn with_path(error: PolicyError, path: &std::path::Path) -> PolicyError {
        error.with_path(path)
    }

    fn entries(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests;
