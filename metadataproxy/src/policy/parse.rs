//! Reading a role policy: JSON, strict (an unknown field is an error, so a typo never widens or
//! narrows what is allowed), every problem reported with its line and column or its rule.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::pattern::AccountId;
use super::{AssignedBy, CgroupPrefix, Glob, Policy, RolePattern, Rule, Selector};

/// The only version of the format there is.
const VERSION: u32 = 1;

/// Where an error is, for messages.
fn named(path: Option<&PathBuf>) -> String {
    path.map_or_else(
        || "role policy".to_owned(),
        |p| format!("role policy file `{}`", p.display()),
    )
}

/// Why a role policy cannot be used.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read {}", named(.path.as_ref()))]
    Read {
        /// The file.
        path: Option<PathBuf>,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Not JSON, or not the policy's shape: where, and what is wrong.
    #[error("{} is invalid at line {line}, column {column}: {message}", named(.path.as_ref()))]
    Syntax {
        /// The file.
        path: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// Rules that parse but cannot be meant (every one listed).
    #[error("{} has invalid rules: {}", named(.path.as_ref()), .problems.join("; "))]
    Rules {
        /// The file.
        path: Option<PathBuf>,
        /// One line per problem, naming the rule.
        problems: Vec<String>,
    },
}

impl PolicyError {
    pub(super) fn with_path(mut self, file: &Path) -> Self {
        match &mut self {
            Self::Read { path, .. } | Self::Syntax { path, .. } | Self::Rules { path, .. } => {
                *path = Some(file.to_owned());
            }
        }
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    version: u32,
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: Option<String>,
    #[serde(rename = "match")]
    selector: SelectorDoc,
    #[serde(default)]
    allow: Vec<RolePattern>,
    #[serde(default)]
    deny: Vec<RolePattern>,
    accounts: Option<Vec<AccountId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorDoc {
    namespace: Option<Glob>,
    pod: Option<Glob>,
    container: Option<Glob>,
    image: Option<Glob>,
    #[serde(default)]
    labels: BTreeMap<String, Glob>,
    cgroup: Option<CgroupPrefix>,
    assigned_by: Option<Vec<AssignedBy>>,
}

/// Parses a policy from text (see the README's "Role policy" for the format).
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    parse_bytes(text.as_bytes())
}

/// [`parse`], from bytes.
pub fn parse_bytes(bytes: &[u8]) -> Result<Policy, PolicyError> {
    let doc: PolicyDoc = serde_json::from_slice(bytes).map_err(|e| PolicyError::Syntax {
        path: None,
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })?;
    let mut problems = Vec::new();
    if doc.version != VERSION {
        problems.push(format!(
            "version {} is not supported (write \"version\": {VERSION})",
            doc.version
        ));
    }
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(doc.rules.len());
    for (i, r) in doc.rules.into_iter().enumerate() {
        let name = r.name.unwrap_or_else(|| format!("rules[{i}]"));
        if name.trim().is_empty() {
            problems.push(format!("rules[{i}] has an empty name"));
        } else if !names.insert(name.clone()) {
            problems.push(format!("rule `{name}` is named twice"));
        }
        if r.allow.is_empty() && r.deny.is_empty() {
            problems.push(format!(
                "rule `{name}` neither allows nor denies a role (give `allow` or `deny`)"
            ));
        }
        if r.accounts.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "rule `{name}` lists no account in `accounts` (omit it for every account)"
            ));
        }
        if r.selector.assigned_by.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "rule `{name}` lists nothing in `assigned_by` (omit it for every caller)"
            ));
        }
        let s = r.selector;
        rules.push(Rule {
            name,
            selector: Selector {
                namespace: s.namespace,
                pod: s.pod,
                container: s.container,
                image: s.image,
                labels: s.labels,
                cgroup: s.cgroup,
                assigned_by: s.assigned_by,
            },
            allow: r.allow,
            deny: r.deny,
            accounts: r
                .accounts
                .map(|a| a.into_iter().map(|AccountId(id)| id).collect()),
        });
    }
    if problems.is_empty() {
        Ok(Policy::new(rules))
    } else {
        Err(PolicyError::Rules {
            path: None,
            problems,
        })
    }
}

/// `serde_json`'s message without its trailing " at line L column C" (the error says it once).
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
