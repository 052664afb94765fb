//! `AWS_ACCOUNT_MAP`: account aliases (`role@alias`) to 12-digit account ids.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;
use thiserror::Error;

use super::names;

/// Why `AWS_ACCOUNT_MAP` cannot be used.
#[derive(Debug, Error)]
pub enum AccountMapError {
    /// The text is not JSON.
    #[error("account map is not valid JSON (line {line}, column {column})")]
    Json {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is not an object.
    #[error("account map must be a JSON object of alias to account id, found {0}")]
    NotAnObject(&'static str),
    /// One or more entries are invalid; every one is listed.
    #[error("account map has {} invalid entr{}: {}", .0.len(), if .0.len() == 1 { "y" } else { "ies" }, ListBad(.0))]
    BadEntries(Vec<BadAccountEntry>),
}

/// One invalid `AWS_ACCOUNT_MAP` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAccountEntry {
    /// The alias (JSON key).
    pub alias: String,
    /// What is wrong, naming the value.
    pub reason: String,
}

struct ListBad<'a>(&'a [BadAccountEntry]);

impl fmt::Display for ListBad<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}`{}`: {}", e.alias, e.reason)?;
        }
        Ok(())
    }
}

/// Account aliases to 12-digit account ids. The default is empty (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountMap {
    ids: HashMap<String, String>,
}

impl AccountMap {
    /// Parses a JSON object of alias → account id. Ids are strings of exactly 12 digits or JSON
    /// integers (zero-padded to 12: `123` → `000000000123`). Aliases must look like aliases
    /// (1–64 characters of `[A-Za-z0-9_.-]`, not all digits), else `role@alias` could never reach them.
    /// Every bad entry is reported, not only the first.
    pub fn parse_json(json: &str) -> Result<AccountMap, AccountMapError> {
        let value: Value = serde_json::from_str(json).map_err(|source| AccountMapError::Json {
            line: source.line(),
            column: source.column(),
            source,
        })?;
        let Value::Object(entries) = value else {
            return Err(AccountMapError::NotAnObject(json_type(&value)));
        };
        let mut ids = HashMap::with_capacity(entries.len());
        let mut bad = Vec::new();
        for (alias, value) in entries {
            let mut reject = |reason: String| {
                bad.push(BadAccountEntry {
                    alias: alias.clone(),
                    reason,
                });
            };
            if !names::is_alias(&alias) {
                reject(
                    "alias must be 1-64 characters of A-Z a-z 0-9 _ . - and not all digits".into(),
                );
                continue;
            }
            match account_id(&value) {
                Ok(id) => {
                    ids.insert(alias, id);
                }
                Err(reason) => reject(reason),
            }
        }
        if bad.is_empty() {
            Ok(Self { ids })
        } else {
            bad.sort_by(|a, b| a.alias.cmp(&b.alias));
            Err(AccountMapError::BadEntries(bad))
        }
    }

    /// The account id for an alias.
    pub fn get(&self, alias: &str) -> Option<&str> {
        self.ids.get(alias).map(String::as_str)
    }

    /// Number of aliases.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no alias is defined.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A JSON account id value as 12 digits, or the reason it is not one.
pub(crate) fn account_id(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if names::is_account_id(s) => Ok(s.clone()),
        Value::String(s) => Err(format!("account id `{s}` is not 12 digits")),
        Value::Number(n) => match n.as_u64() {
            Some(id) if id <= 999_999_999_999 => Ok(format!("{id:012}")),
            _ => Err(format!(
                "account id {n} is not a non-negative integer of at most 12 digits"
            )),
        },
        other => Err(format!(
            "account id must be a string or an integer, found {}",
            json_type(other)
        )),
    }
}

/// The JSON type name of a value, for error messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_integers() {
        let map = AccountMap::parse_json(
            r#"{"prod": "123456789012", "dev": 210987654321, "legacy": 123456789, "shared-services.eu": "000000000042"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.len(), 4);
        assert_eq!(map.get("prod"), Some("123456789012"));
        assert_eq!(map.get("dev"), Some("210987654321"));
        assert_eq!(map.get("legacy"), Some("000123456789"));
        assert_eq!(map.get("shared-services.eu"), Some("000000000042"));
        assert_eq!(map.get("staging"), None);
        assert!(AccountMap::parse_json("{}").is_ok_and(|m| m.is_empty()));
        assert!(AccountMap::default().is_empty());
    }

    #[test]
    fn reports_every_bad_entry() {
        let json = r#"{"ok": "123456789012", "short": "12345", "neg": -1, "big": 1234567890123,
                      "float": 1.5, "null": null, "bad alias": "123456789012", "123456789012": "123456789012"}"#;
        let Err(AccountMapError::BadEntries(bad)) = AccountMap::parse_json(json) else {
            panic!("expected BadEntries");
        };
        let aliases: Vec<&str> = bad.iter().map(|e| e.alias.as_str()).collect();
        assert_eq!(
            aliases,
            [
                "123456789012",
                "bad alias",
                "big",
                "float",
                "neg",
                "null",
                "short"
            ]
        );
        let msg = AccountMapError::BadEntries(bad).to_string();
        assert!(
            msg.starts_with("account map has 7 invalid entries: "),
            "{msg}"
        );
        assert!(
            msg.contains("`short`: account id `12345` is not 12 digits"),
            "{msg}"
        );
        assert!(msg.contains("`neg`: account id -1 is not"), "{msg}");
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert!(matches!(
            AccountMap::parse_json(r#"["prod"]"#),
            Err(AccountMapError::NotAnObject("an array"))
        ));
        assert!(matches!(
            AccountMap::parse_json("{\n\"prod\": }"),
            Err(AccountMapError::Json {
                line: 2,
                column: 9,
                ..
            })
        ));
    }
}
