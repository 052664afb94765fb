//! What a caller is entitled to: a role, and optionally an external id and session name.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use super::account_map::{account_id, json_type};
use super::session::SessionName;
use super::spec::{RoleSpec, RoleSpecError};
use super::tags::SessionContext;

/// Shortest external id STS accepts.
pub const MIN_EXTERNAL_ID_LEN: usize = 2;
/// Longest external id STS accepts.
pub const MAX_EXTERNAL_ID_LEN: usize = 1224;

/// Why an external id is invalid. The id itself is never printed: it is semi-secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExternalIdError {
    /// Fewer than 2 or more than 1224 characters.
    #[error("external id has {0} characters; STS requires 2 to 1224")]
    Length(usize),
    /// A character outside `[A-Za-z0-9_+=,.@:/-]`.
    #[error(
        "external id has `{ch}` at character {position}; STS allows only A-Z a-z 0-9 _ + = , . @ : / -"
    )]
    Char {
        /// The offending character.
        ch: char,
        /// Its 1-based position.
        position: usize,
    },
}

/// Checks an STS external id: 2–1224 characters of ASCII `[\w+=,.@:/-]`.
pub fn validate_external_id(id: &str) -> Result<(), ExternalIdError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
    if let Some((i, ch)) = id.chars().enumerate().find(|&(_, c)| !allowed(c)) {
        return Err(ExternalIdError::Char {
            ch,
            position: i + 1,
        });
    }
    if !(MIN_EXTERNAL_ID_LEN..=MAX_EXTERNAL_ID_LEN).contains(&id.len()) {
        return Err(ExternalIdError::Length(id.len()));
    }
    Ok(())
}

/// Why a mapping value is not a role assignment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssignmentError {
    /// The value is neither a role string nor an object.
    #[error("expected a role string or an object with `name`, found {0}")]
    NotARole(&'static str),
    /// The object has no `name`.
    #[error("object has no `name`")]
    MissingName,
    /// A field has the wrong JSON type.
    #[error("`{field}` must be a string, found {found}")]
    FieldType {
        /// The field.
        field: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A numeric `account_id` is not an account id.
    #[error("`account_id`: {0}")]
    AccountId(String),
    /// `session_name` has fewer than 2 characters.
    #[error("session name `{0}` is shorter than 2 characters")]
    SessionName(String),
    /// The role string (or `name` with `account_id`) is invalid.
    #[error(transparent)]
    Role(#[from] RoleSpecError),
    /// The external id is invalid.
    #[error(transparent)]
    ExternalId(#[from] ExternalIdError),
}

/// What a caller is entitled to. `Debug` redacts the external id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoleAssignment {
    /// The role to assume.
    pub role: RoleSpec,
    /// The external id to pass to `sts:AssumeRole`; semi-secret.
    pub external_id: Option<String>,
    /// The session name; `None` means the default (or `ROLE_SESSION_KEY`'s value).
    pub session_name: Option<SessionName>,
    /// Session tags and source identity of the workload (`SESSION_TAGS`, `SOURCE_IDENTITY`).
    pub context: Option<Arc<SessionContext>>,
}

/// What a caller adds to a role it does not name itself (`DEFAULT_ROLE`): its session name
/// (`ROLE_SESSION_KEY`) and its session tags and source identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// The session name, if the caller gives one.
    pub name: Option<SessionName>,
    /// Its tags and source identity, if any are configured and known.
    pub context: Option<Arc<SessionContext>>,
}

impl Session {
    /// Just a session name.
    pub fn named(name: Option<SessionName>) -> Self {
        Self {
            name,
            context: None,
        }
    }
}

impl RoleAssignment {
    /// `default` (`DEFAULT_ROLE`) for a caller that names no role of its own: `default` itself,
    /// or a copy with the caller's session name, tags and source identity when it has any.
    pub fn with_session(default: &Arc<Self>, session: &Session) -> Arc<Self> {
        if session.name.is_none() && session.context.is_none() {
            return Arc::clone(default);
        }
        Arc::new(Self {
            session_name: session
                .name
                .clone()
                .or_else(|| default.session_name.clone()),
            context: session.context.clone(),
            ..Self::clone(default)
        })
    }

    /// This assignment with the workload's session tags and source identity.
    #[must_use]
    pub fn with_context(self, context: Option<Arc<SessionContext>>) -> Self {
        Self { context, ..self }
    }

    /// An assignment of just a role.
    pub fn from_role(role: RoleSpec) -> RoleAssignment {
        Self {
            role,
            external_id: None,
            session_name: None,
            context: None,
        }
    }

    /// An assignment with a validated external id.
    pub fn new(
        role: RoleSpec,
        external_id: Option<String>,
        session_name: Option<SessionName>,
    ) -> Result<RoleAssignment, ExternalIdError> {
        if let Some(id) = &external_id {
            validate_external_id(id)?;
        }
        Ok(Self {
            role,
            external_id,
            session_name,
            context: None,
        })
    }

    /// Parses a mapping-file value: a role string, or `{name, account_id?, external_id?, session_name?}`.
    ///
    /// With `account_id`, `name` is taken literally (see [`RoleSpec::with_account`]); without it,
    /// `name` is a full role string. `null` and `""` optional fields count as absent (Lyft passes
    /// only truthy values to STS). `session_name` is sanitised like any session name. Unknown fields
    /// are logged (naming `key`) and ignored.
    pub(crate) fn from_json(value: &Value, key: &str) -> Result<RoleAssignment, AssignmentError> {
        let fields = match value {
            Value::String(role) => return Ok(Self::from_role(RoleSpec::parse(role)?)),
            Value::Object(fields) => fields,
            other => return Err(AssignmentError::NotARole(json_type(other))),
        };
        let text = |field: &'static str| -> Result<Option<&str>, AssignmentError> {
            match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(AssignmentError::FieldType {
                    field,
                    found: json_type(other),
                }),
            }
        };
        for field in fields.keys() {
            if !["name", "account_id", "external_id", "session_name"].contains(&field.as_str()) {
                tracing::warn!(key, field, "ignoring unknown field in role mapping entry");
            }
        }
        let name = text("name")?.ok_or(AssignmentError::MissingName)?;
        let role = match fields.get("account_id") {
            Some(n @ Value::Number(_)) => {
                let id = account_id(n).map_err(AssignmentError::AccountId)?;
                RoleSpec::with_account(name, &id)?
            }
            _ => match text("account_id")? {
                Some(account) => RoleSpec::with_account(name, account)?,
                None => RoleSpec::parse(name)?,
            },
        };
        let session_name = match text("session_name")? {
            Some(raw) => Some(
                SessionName::sanitize(raw)
                    .ok_or_else(|| AssignmentError::SessionName(raw.to_owned()))?,
            ),
            None => None,
        };
        Ok(Self::new(
            role,
            text("external_id")?.map(str::to_owned),
            session_name,
        )?)
    }
}

/// Prints `**redacted**` in place of a value.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**redacted**")
    }
}

impl fmt::Debug for RoleAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleAssignment")
            .field("role", &self.role)
            .field("external_id", &self.external_id.as_ref().map(|_| Redacted))
            .field("session_name", &self.session_name)
            .field("context", &self.context)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: &Value) -> Result<RoleAssignment, AssignmentError> {
        RoleAssignment::from_json(value, "10.0.0.2")
    }

    #[test]
    fn external_ids() {
        for ok in [
            "ab",
            "tenant-42",
            "arn:aws:iam::1:x/y",
            "a_b+c=d,e.f@g",
            &"x".repeat(1224),
        ] {
            assert_eq!(validate_external_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_external_id("a"), Err(ExternalIdError::Length(1)));
        assert_eq!(
            validate_external_id(&"x".repeat(1225)),
            Err(ExternalIdError::Length(1225))
        );
        assert_eq!(
            validate_external_id("ab cd"),
            Err(ExternalIdError::Char {
                ch: ' ',
                position: 3
            })
        );
        assert!(
            !ExternalIdError::Char {
                ch: ' ',
                position: 3
            }
            .to_string()
            .contains("ab")
        );
    }

    #[test]
    fn value_forms() {
        let a = parse(&json!("web@123456789012")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a,
            RoleAssignment::from_role(
                RoleSpec::parse("web@123456789012").unwrap_or_else(|e| panic!("{e}"))
            )
        );

        let a = parse(
            &json!({"name": "web", "account_id": "123456789012", "external_id": "tenant-42",
                              "session_name": "my service", "comment": "ignored"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.role.to_string(), "web@123456789012");
        assert_eq!(a.external_id.as_deref(), Some("tenant-42"));
        assert_eq!(
            a.session_name.as_ref().map(SessionName::as_str),
            Some("my_service")
        );

        let a =
            parse(&json!({"name": "team/web", "account_id": 42})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.role.to_string(), "team/web@000000000042");
        let a = parse(&json!({"name": "web@prod", "external_id": "", "session_name": null}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a.role.to_string(), a.external_id, a.session_name),
            ("web@prod".into(), None, None)
        );
        let a = parse(&json!({"name": "arn:aws-cn:iam::123456789012:role/web"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.role.to_string(), "arn:aws-cn:iam::123456789012:role/web");
    }

    #[test]
    fn bad_values() {
        let cases = [
            (json!(42), AssignmentError::NotARole("a number")),
            (json!(["web"]), AssignmentError::NotARole("an array")),
            (
                json!({"account_id": "123456789012"}),
                AssignmentError::MissingName,
            ),
            (
                json!({"name": 7}),
                AssignmentError::FieldType {
                    field: "name",
                    found: "a number",
                },
            ),
            (
                json!({"name": "web", "external_id": 7}),
                AssignmentError::FieldType {
                    field: "external_id",
                    found: "a number",
                },
            ),
            (
                json!({"name": "web", "session_name": "x"}),
                AssignmentError::SessionName("x".into()),
            ),
            (
                json!({"name": "web", "external_id": "bad id"}),
                ExternalIdError::Char {
                    ch: ' ',
                    position: 4,
                }
                .into(),
            ),
            (
                json!({"name": "web", "account_id": "12"}),
                RoleSpecError::BadAccount("12".into()).into(),
            ),
            (
                json!({"name": "web", "account_id": -5}),
                AssignmentError::AccountId(
                    "account id -5 is not a non-negative integer of at most 12 digits".into(),
                ),
            ),
            (json!(""), RoleSpecError::Empty.into()),
        ];
        for (value, want) in cases {
            assert_eq!(parse(&value), Err(want), "{value}");
        }
    }

    #[test]
    fn debug_redacts_external_id() {
        let role = RoleSpec::parse("web").unwrap_or_else(|e| panic!("{e}"));
        let a = RoleAssignment::new(role, Some("s3cr3t-tenant".into()), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{a:?}");
        assert!(debug.contains("external_id: Some(**redacted**)"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }
}
