//! IAM naming rules shared by role strings and ARNs: role names, role paths, account ids, aliases.

use thiserror::Error;

/// Longest IAM role name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest IAM role path, slashes included.
pub const MAX_PATH_LEN: usize = 512;
/// Longest account alias accepted in `role@alias` and `AWS_ACCOUNT_MAP`.
pub const MAX_ALIAS_LEN: usize = 64;

/// Why a role name or role path breaks IAM's rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IamNameError {
    /// The role name is empty (for example a role string ending in `/`).
    #[error("role name is empty")]
    EmptyName,
    /// The role name is longer than IAM's 64 characters.
    #[error("role name `{0}` is longer than 64 characters")]
    NameTooLong(String),
    /// The role name contains a character IAM does not allow.
    #[error("role name `{name}` contains `{ch}`; IAM allows only A-Z a-z 0-9 + = , . @ _ -")]
    NameChar {
        /// The offending name.
        name: String,
        /// The first character not allowed.
        ch: char,
    },
    /// The role path has an empty segment (`a//b`).
    #[error("role path `{0}` has an empty segment")]
    EmptyPathSegment(String),
    /// The role path contains a character outside the role-name charset.
    #[error("role path `{path}` contains `{ch}`; allowed: A-Z a-z 0-9 + = , . @ _ - and /")]
    PathChar {
        /// The offending path.
        path: String,
        /// The first character not allowed.
        ch: char,
    },
    /// The role path is longer than IAM's 512 characters.
    #[error("role path `{0}` is longer than 512 characters")]
    PathTooLong(String),
}

/// True for the characters IAM allows in role names and path segments.
pub(crate) fn is_iam_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | ',' | '.' | '@' | '_' | '-')
}

/// Checks a role name: 1–64 characters of `[A-Za-z0-9+=,.@_-]`.
pub(crate) fn validate_name(name: &str) -> Result<(), IamNameError> {
    if name.is_empty() {
        return Err(IamNameError::EmptyName);
    }
    if let Some(ch) = name.chars().find(|&c| !is_iam_char(c)) {
        return Err(IamNameError::NameChar {
            name: name.to_owned(),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(IamNameError::NameTooLong(name.to_owned()));
    }
    Ok(())
}

/// Checks a canonical role path: `/`, or `/seg/…/seg/` with IAM-charset segments, at most 512 long.
pub(crate) fn validate_path(path: &str) -> Result<(), IamNameError> {
    if path.len() > MAX_PATH_LEN {
        return Err(IamNameError::PathTooLong(path.to_owned()));
    }
    if let Some(ch) = path.chars().find(|&c| c != '/' && !is_iam_char(c)) {
        return Err(IamNameError::PathChar {
            path: path.to_owned(),
            ch,
        });
    }
    if path == "/" {
        return Ok(());
    }
    let inner = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix('/'))
        .ok_or_else(|| IamNameError::EmptyPathSegment(path.to_owned()))?;
    if inner.split('/').any(str::is_empty) {
        return Err(IamNameError::EmptyPathSegment(path.to_owned()));
    }
    Ok(())
}

/// Splits `a/b/name` (leading `/` optional) into the canonical path `/a/b/` and the name, validated.
pub(crate) fn split_path_name(s: &str) -> Result<(String, String), IamNameError> {
    let trimmed = s.strip_prefix('/').unwrap_or(s);
    let (dirs, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    let path = format!("/{dirs}");
    validate_path(&path)?;
    validate_name(name)?;
    Ok((path, name.to_owned()))
}

/// True for an AWS account id: exactly 12 ASCII digits.
pub(crate) fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// True for something that looks like an account alias: 1–64 characters of `[A-Za-z0-9_.-]`,
/// not all digits (an all-digit suffix is an account id, or a typo of one).
pub(crate) fn is_alias(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ALIAS_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "my-role",
            "ci@github.com",
            "A+b=c,d.e@f_g-h",
            &"x".repeat(64),
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(IamNameError::EmptyName));
        assert!(matches!(
            validate_name(&"x".repeat(65)),
            Err(IamNameError::NameTooLong(_))
        ));
        assert_eq!(
            validate_name("my role"),
            Err(IamNameError::NameChar {
                name: "my role".into(),
                ch: ' '
            })
        );
        assert!(matches!(
            validate_name("rôle"),
            Err(IamNameError::NameChar { ch: 'ô', .. })
        ));
    }

    #[test]
    fn paths() {
        for ok in ["/", "/a/", "/service-role/", "/a/b.c/d@e/"] {
            assert_eq!(validate_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "//",
            "/a//b/",
            "/a",
            "a/",
            "/a b/",
            &format!("/{}/", "x".repeat(511)),
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split() {
        let cases = [
            ("web", "/", "web"),
            ("/web", "/", "web"),
            ("service-role/web", "/service-role/", "web"),
            ("/a/b/web", "/a/b/", "web"),
        ];
        for (input, path, name) in cases {
            assert_eq!(
                split_path_name(input),
                Ok((path.into(), name.into())),
                "{input}"
            );
        }
        assert_eq!(split_path_name("a/"), Err(IamNameError::EmptyName));
        assert!(matches!(
            split_path_name("a//b"),
            Err(IamNameError::EmptyPathSegment(_))
        ));
    }

    #[test]
    fn accounts_and_aliases() {
        assert!(is_account_id("012345678901"));
        assert!(!is_account_id("12345678901"));
        assert!(!is_account_id("1234567890123"));
        assert!(!is_account_id("12345678901a"));
        for alias in ["prod", "shared-services", "dev_1", "example.com", "9lives"] {
            assert!(is_alias(alias), "{alias}");
        }
        for not in ["", "123", "a+b", "a b", "a:b", &"a".repeat(65)] {
            assert!(!is_alias(not), "{not}");
        }
    }
}
