//! The patterns of a role policy: IAM-style wildcards (`*`, `?`) on names and role ARNs, and
//! cgroup path prefixes; each checked when the policy is parsed.

use std::fmt;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::role::RoleArn;

/// A wildcard pattern on a name: `*` any run of characters, `?` one character.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob {
    text: String,
    matcher: WildMatch,
}

impl Glob {
    /// Whether `value` matches, as a whole.
    pub fn matches(&self, value: &str) -> bool {
        self.matcher.matches(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for Glob {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty pattern (write `*` to match anything)".into());
        }
        Ok(Self {
            matcher: WildMatch::new(&text),
            text,
        })
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// A pattern on the role asked for: on its whole ARN when it starts with `arn:`, else on what
/// follows `role/` in the ARN (the role's path and name: `web`, `team/web`).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub enum RolePattern {
    /// `arn:aws:iam::123456789012:role/team/*`.
    Arn(Glob),
    /// `web-*`, `team/*`.
    Name(Glob),
}

impl RolePattern {
    /// Whether the role `arn` (written out as `arn_text`) matches.
    pub fn matches(&self, arn: &RoleArn, arn_text: &str) -> bool {
        match self {
            Self::Arn(g) => g.matches(arn_text),
            Self::Name(g) => {
                let path = arn.path().strip_prefix('/').unwrap_or(arn.path());
                if path.is_empty() {
                    g.matches(arn.name())
                } else {
                    g.matches(&format!("{path}{}", arn.name()))
                }
            }
        }
    }
}

impl TryFrom<String> for RolePattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("arn:") {
            if !rest.contains(":role/") && !rest.ends_with('*') {
                return Err(format!(
                    "`{text}` is not a role ARN pattern (arn:<partition>:iam::<account>:role/<name>)"
                ));
            }
            return Glob::try_from(text).map(Self::Arn);
        }
        if text.starts_with('/') {
            return Err(format!(
                "`{text}`: a role pattern is the role's path and name without a leading `/` (`team/web`), or an ARN"
            ));
        }
        Glob::try_from(text).map(Self::Name)
    }
}

/// A cgroup v2 path: the cgroup itself and every cgroup below it.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct CgroupPrefix(String);

impl CgroupPrefix {
    /// Whether `path` is this cgroup or below it (whole components: `/a` does not hold `/ab`).
    pub fn contains(&self, path: &str) -> bool {
        crate::cgroup::is_within(path, &self.0)
    }
}

impl TryFrom<String> for CgroupPrefix {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("cgroup `{text}` must be a path starting with `/`"));
        }
        if text.split('/').any(|c| c == "." || c == "..") {
            return Err(format!("cgroup `{text}` has a `.` or `..` component"));
        }
        let trimmed = text.trim_end_matches('/');
        Ok(Self(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }
}

/// A 12-digit account id.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub(super) struct AccountId(pub(super) String);

impl TryFrom<String> for AccountId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(text))
        } else {
            Err(format!("`{text}` is not an account id (12 digits)"))
        }
    }
}
