//! STS session tags and `SourceIdentity` from what the daemon knows of a workload
//! (`SESSION_TAGS`, `SESSION_TAGS_TRANSITIVE`, `SOURCE_IDENTITY`): which tag comes from where,
//! checked when the daemon starts; the values taken from each container and made to fit STS's
//! rules, so `CloudTrail` and ABAC policies can name the workload behind every call.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// The container label Kubernetes gives a pod's containers naming the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The container label Kubernetes gives a pod's containers naming the pod.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// The container label Kubernetes gives a pod's containers holding the pod's uid.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// Most session tags STS accepts on one call.
pub const MAX_TAGS: usize = 50;
/// Longest tag key STS accepts.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value STS accepts.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Longest `SourceIdentity` STS accepts.
pub const MAX_SOURCE_IDENTITY_LEN: usize = 64;

/// Where a tag's (or the source identity's) value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadField {
    /// `Name`: the container's name.
    Name,
    /// `Image`: the container's image.
    Image,
    /// `Namespace`: its Kubernetes namespace (label `io.kubernetes.pod.namespace`).
    Namespace,
    /// `PodName`: its pod's name (label `io.kubernetes.pod.name`).
    PodName,
    /// `PodUid`: its pod's uid (label `io.kubernetes.pod.uid`).
    PodUid,
    /// `Labels:KEY`: a label of the container.
    Label(String),
    /// `Env:KEY`: an environment variable of the container (never one that looks secret).
    Env(String),
}

/// Words that make an environment variable look like a secret: never sent as a tag.
const SECRET_WORDS: &[&str] = &[
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "PRIVATE",
    "EXTERNAL_ID",
    "ACCESS_KEY",
    "API_KEY",
    "APIKEY",
];

impl WorkloadField {
    /// Parses `Name`, `Image`, `Namespace`, `PodName`, `PodUid`, `Labels:KEY` or `Env:KEY`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "Name" => return Ok(Self::Name),
            "Image" => return Ok(Self::Image),
            "Namespace" => return Ok(Self::Namespace),
            "PodName" => return Ok(Self::PodName),
            "PodUid" => return Ok(Self::PodUid),
            _ => {}
        }
        if let Some(key) = text.strip_prefix("Labels:").filter(|k| !k.is_empty()) {
            return Ok(Self::Label(key.to_owned()));
        }
        if let Some(key) = text.strip_prefix("Env:").filter(|k| !k.is_empty()) {
            let upper = key.to_ascii_uppercase();
            if let Some(word) = SECRET_WORDS.iter().find(|w| upper.contains(*w)) {
                return Err(format!(
                    "`Env:{key}` looks like a secret (its name contains {word}); session tags are visible in CloudTrail"
                ));
            }
            return Ok(Self::Env(key.to_owned()));
        }
        Err(format!(
            "`{text}` is not Name, Image, Namespace, PodName, PodUid, Labels:KEY or Env:KEY"
        ))
    }

    /// The value for a container with these facts, if it has one.
    fn value<'a>(&self, w: &WorkloadFacts<'a>) -> Option<&'a str> {
        let label = |key: &str| w.labels.get(key).map(String::as_str);
        match self {
            Self::Name => Some(w.name),
            Self::Image => Some(w.image),
            Self::Namespace => label(NAMESPACE_LABEL),
            Self::PodName => label(POD_NAME_LABEL),
            Self::PodUid => label(POD_UID_LABEL),
            Self::Label(key) => label(key),
            Self::Env(key) => w
                .env
                .iter()
                .rev()
                .find_map(|e| e.split_once('=').filter(|(k, _)| k == key))
                .map(|(_, v)| v),
        }
        .filter(|v| !v.is_empty())
    }
}

impl fmt::Display for WorkloadField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name => f.write_str("Name"),
            Self::Image => f.write_str("Image"),
            Self::Namespace => f.write_str("Namespace"),
            Self::PodName => f.write_str("PodName"),
            Self::PodUid => f.write_str("PodUid"),
            Self::Label(key) => write!(f, "Labels:{key}"),
            Self::Env(key) => write!(f, "Env:{key}"),
        }
    }
}

/// Why `SESSION_TAGS`, `SESSION_TAGS_TRANSITIVE` or `SOURCE_IDENTITY` is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagsError {
    /// An entry is not `key=Source`.
    #[error("`{0}` is not KEY=SOURCE (e.g. kubernetes-namespace=Namespace)")]
    NotAPair(String),
    /// A key STS would refuse.
    #[error("tag key `{key}`: {why}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A source that is not one.
    #[error("tag `{key}`: {why}")]
    Source {
        /// The tag's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Two keys equal but for case (STS compares keys case-insensitively).
    #[error("tag key `{0}` is given twice (keys are compared without case)")]
    Duplicate(String),
    /// More tags than STS accepts.
    #[error("{0} tags; STS accepts at most {MAX_TAGS}")]
    TooMany(usize),
    /// A transitive key that is not a tag.
    #[error("transitive key `{0}` is not a key of SESSION_TAGS")]
    NotATag(String),
}

/// One configured tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSpec {
    /// The tag key sent to STS.
    pub key: String,
    /// Where its value comes from.
    pub from: WorkloadField,
}

/// What each workload's `AssumeRole` call carries beyond the role: empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagsConfig {
    /// `SESSION_TAGS`.
    pub tags: Vec<TagSpec>,
    /// `SESSION_TAGS_TRANSITIVE`.
    pub transitive: Vec<String>,
    /// `SOURCE_IDENTITY`.
    pub source_identity: Option<WorkloadField>,
}

/// Whether `c` is a character STS allows in tag keys and values.
fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c)
}

impl TagsConfig {
    /// Parses `SESSION_TAGS` (`key=Source,…`).
    pub fn parse_tags(text: &str) -> Result<Vec<TagSpec>, TagsError> {
        let mut tags: Vec<TagSpec> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, from) = entry
                .split_once('=')
                .ok_or_else(|| TagsError::NotAPair(entry.to_owned()))?;
            let key = key.trim();
            let bad = |why| TagsError::Key {
                key: key.to_owned(),
                why,
            };
            if key.is_empty() || key.chars().count() > MAX_TAG_KEY_LEN {
                return Err(bad("STS takes 1 to 128 characters"));
            }
            if !key.chars().all(is_tag_char) {
                return Err(bad(
                    "STS allows only letters, digits, spaces and _ . : / = + - @",
                ));
            }
            if key.to_ascii_lowercase().starts_with("aws:") {
                return Err(bad("the prefix aws: is reserved by AWS"));
            }
            if tags.iter().any(|t| t.key.eq_ignore_ascii_case(key)) {
                return Err(TagsError::Duplicate(key.to_owned()));
            }
            let from = WorkloadField::parse(from.trim()).map_err(|why| TagsError::Source {
                key: key.to_owned(),
                why,
            })?;
            tags.push(TagSpec {
                key: key.to_owned(),
                from,
            });
        }
        if tags.len() > MAX_TAGS {
            return Err(TagsError::TooMany(tags.len()));
        }
        Ok(tags)
    }

    /// Parses `SESSION_TAGS_TRANSITIVE` (`key,…`), each a key of `tags`.
    pub fn parse_transitive(text: &str, tags: &[TagSpec]) -> Result<Vec<String>, TagsError> {
        let mut keys: Vec<String> = Vec::new();
        for key in text.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let Some(tag) = tags.iter().find(|t| t.key.eq_ignore_ascii_case(key)) else {
                return Err(TagsError::NotATag(key.to_owned()));
            };
            if !keys.contains(&tag.key) {
                keys.push(tag.key.clone());
            }
        }
        Ok(keys)
    }

    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.source_identity.is_none()
    }

    /// What a workload with these facts sends; `None` when nothing is configured or known.
    pub fn context_for(&self, w: &WorkloadFacts<'_>) -> Option<Arc<SessionContext>> {
        if self.is_empty() {
            return None;
        }
        let tags: Vec<(String, String)> = self
            .tags
            .iter()
            .filter_map(|t| Some((t.key.clone(), tag_value(t.from.value(w)?))))
            .collect();
        let transitive = self
            .transitive
            .iter()
            .filter(|k| tags.iter().any(|(key, _)| key == *k))
            .cloned()
            .collect();
        let source_identity = self
            .source_identity
            .as_ref()
            .and_then(|f| f.value(w))
            .and_then(source_identity);
        let context = SessionContext {
            tags,
            transitive,
            source_identity,
        };
        (!context.is_empty()).then(|| Arc::new(context))
    }
}

/// What a tag value or the source identity may be taken from.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadFacts<'a> {
    /// The container's name.
    pub name: &'a str,
    /// Its image.
    pub image: &'a str,
    /// Its labels.
    pub labels: &'a HashMap<String, String>,
    /// Its environment, `KEY=VALUE`.
    pub env: &'a [String],
}

/// `raw` made a valid tag value: characters STS refuses become `_`, cut to 256 characters.
pub fn tag_value(raw: &str) -> String {
    raw.chars()
        .take(MAX_TAG_VALUE_LEN)
        .map(|c| if is_tag_char(c) { c } else { '_' })
        .collect()
}

/// `raw` made a valid `SourceIdentity`: characters outside `[A-Za-z0-9_+=,.@-]` become `_`, cut
/// to 64 characters; `None` when fewer than 2 remain.
pub fn source_identity(raw: &str) -> Option<String> {
    let id: String = raw
        .chars()
        .take(MAX_SOURCE_IDENTITY_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (id.len() >= 2).then_some(id)
}

/// What one workload's `AssumeRole` calls carry beyond role, external id and session name. Part
/// of the credentials' cache key: workloads whose tags differ never share credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SessionContext {
    /// `Tags`: (key, value), in the order configured.
    pub tags: Vec<(String, String)>,
    /// `TransitiveTagKeys`: the configured ones this workload has.
    pub transitive: Vec<String>,
    /// `SourceIdentity`.
    pub source_identity: Option<String>,
}

impl SessionContext {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.source_identity.is_none()
    }
}

impl fmt::Display for SessionContext {
    /// `key=value,…` then `source_identity=…`, for log lines (tag values are not secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.tags.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { "," })?;
        }
        if let Some(id) = &self.source_identity {
            write!(
                f,
                "{}source_identity={id}",
                if self.tags.is_empty() { "" } else { "," }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "tags_tests.rs"]
mod tests;
