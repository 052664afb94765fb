//! STS role session names: sanitised the way Lyft does, within STS's 2–64 character limit.

use std::fmt;

/// Longest session name STS accepts.
pub const MAX_SESSION_NAME_LEN: usize = 64;
/// Shortest session name STS accepts.
pub const MIN_SESSION_NAME_LEN: usize = 2;

/// A valid `RoleSessionName`: 2–64 characters of `[A-Za-z0-9+=,.@_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionName(String);

impl SessionName {
    /// Lyft's default session name.
    pub const DEFAULT: &'static str = "devproxyauth";

    /// Makes a session name from arbitrary text (a container label or variable): every character
    /// outside ASCII `[A-Za-z0-9+=,.@_-]` becomes `_`, then the result is cut to 64 characters.
    /// `None` when fewer than 2 characters remain.
    pub fn sanitize(raw: &str) -> Option<SessionName> {
        let name: String = raw
            .chars()
            .take(MAX_SESSION_NAME_LEN)
            .map(|c| if super::names::is_iam_char(c) { c } else { '_' })
            .collect();
        (name.len() >= MIN_SESSION_NAME_LEN).then_some(Self(name))
    }

    /// `devproxyauth`, Lyft's default.
    pub fn default_name() -> SessionName {
        Self(Self::DEFAULT.to_owned())
    }

    /// The name to send to STS.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SessionName {
    fn default() -> Self {
        Self::default_name()
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a container's role session name comes from (`ROLE_SESSION_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// `Env:KEY` — an environment variable of the container.
    Env(String),
    /// `Labels:KEY` — a label of the container.
    Label(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_real_inputs() {
        let cases = [
            ("web", Some("web")),
            ("ab", Some("ab")),
            ("a", None),
            ("", None),
            ("user@example.com", Some("user@example.com")),
            ("my service", Some("my_service")),
            ("team/web:v1.2", Some("team_web_v1.2")),
            (
                "k8s_default_web-7d9f8c6b5-x2x4z",
                Some("k8s_default_web-7d9f8c6b5-x2x4z"),
            ),
            ("café", Some("caf_")),
            ("名前", Some("__")),
            ("a=b,c+d", Some("a=b,c+d")),
        ];
        for (raw, want) in cases {
            assert_eq!(
                SessionName::sanitize(raw).as_ref().map(SessionName::as_str),
                want,
                "{raw:?}"
            );
        }
        let long = "x".repeat(100);
        assert_eq!(
            SessionName::sanitize(&long).map(|s| s.as_str().len()),
            Some(64)
        );
        let long_unicode = "é".repeat(100);
        assert_eq!(
            SessionName::sanitize(&long_unicode).map(|s| s.as_str().to_owned()),
            Some("_".repeat(64))
        );
    }

    #[test]
    fn default_is_lyfts() {
        assert_eq!(SessionName::default_name().as_str(), "devproxyauth");
        assert_eq!(SessionName::default().to_string(), "devproxyauth");
    }
}
