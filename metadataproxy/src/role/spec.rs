//! Role strings as operators write them (`IAM_ROLE`, `DEFAULT_ROLE`, the mapping file): parsed, not resolved.
//!
//! Accepted forms: `name`, `path/to/name`, `name@123456789012`, `name@alias`, `path/name@alias`, and
//! `arn:<partition>:iam::<account>:role/<path/>name`.
//!
//! IAM role names may themselves contain `@`, so `@` is ambiguous. The rule: split on the **last** `@`.
//! The suffix is the account when it is 12 digits or looks like an alias (1–64 characters of
//! `[A-Za-z0-9_.-]`, not all digits); an all-digit suffix of another length is rejected as a mistyped
//! account id; any other suffix (it holds `+`, `=` or `,`) leaves the whole string as the role name.
//! So `ci@github.com` means role `ci` in the account aliased `github.com`, and a role really named
//! `ci@github.com` must be written as its ARN (or as a mapping-file object with `account_id`).

use std::fmt;

use thiserror::Error;

use super::arn::{Partition, RoleArn, RoleArnError};
use super::names::{self, IamNameError};

/// The account part of a role string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountRef {
    /// A 12-digit account id.
    Id(String),
    /// An alias to look up in `AWS_ACCOUNT_MAP`.
    Alias(String),
}

impl AccountRef {
    /// Classifies an explicit account reference: 12 digits → id, alias-looking → alias, else an error.
    pub fn parse(s: &str) -> Result<AccountRef, RoleSpecError> {
        let s = s.trim();
        if names::is_account_id(s) {
            Ok(Self::Id(s.to_owned()))
        } else if names::is_alias(s) {
            Ok(Self::Alias(s.to_owned()))
        } else {
            Err(RoleSpecError::BadAccount(s.to_owned()))
        }
    }

    /// The id or alias as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Id(s) | Self::Alias(s) => s,
        }
    }
}

impl fmt::Display for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a role string cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleSpecError {
    /// The role string is empty or only whitespace.
    #[error("role string is empty")]
    Empty,
    /// Nothing before the `@` (`@prod`).
    #[error("role `{0}` has no name before `@`")]
    MissingName(String),
    /// Nothing after the `@` (`web@`).
    #[error("role `{0}` has no account after `@`")]
    MissingAccount(String),
    /// The account suffix is all digits but not 12 of them: a mistyped account id.
    #[error("account id `{account}` in role `{role}` is not 12 digits")]
    BadAccountId {
        /// The whole role string.
        role: String,
        /// The offending suffix.
        account: String,
    },
    /// An explicit account reference is neither 12 digits nor an alias of `[A-Za-z0-9_.-]`.
    #[error("account `{0}` is neither a 12-digit id nor an alias of A-Z a-z 0-9 _ . -")]
    BadAccount(String),
    /// The string starts with `arn:` but is not a valid role ARN.
    #[error(transparent)]
    Arn(#[from] RoleArnError),
    /// The role name or path breaks IAM's rules.
    #[error(transparent)]
    Name(#[from] IamNameError),
}

/// A parsed role string: name, path and optionally account and partition (from an ARN).
///
/// Invariants: the name and path are valid IAM; `partition` is set only for ARNs, which always
/// carry an [`AccountRef::Id`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleSpec {
    name: String,
    path: String,
    account: Option<AccountRef>,
    partition: Option<Partition>,
}

impl RoleSpec {
    /// Parses a role string; see the module documentation for the forms and the `@` rule.
    pub fn parse(s: &str) -> Result<RoleSpec, RoleSpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RoleSpecError::Empty);
        }
        if s.starts_with("arn:") {
            return Ok(Self::from(RoleArn::parse(s)?));
        }
        let (role, account) = match s.rsplit_once('@') {
            Some((_, "")) => return Err(RoleSpecError::MissingAccount(s.to_owned())),
            Some(("", _)) => return Err(RoleSpecError::MissingName(s.to_owned())),
            Some((role, suffix)) if suffix.bytes().all(|b| b.is_ascii_digit()) => {
                if !names::is_account_id(suffix) {
                    return Err(RoleSpecError::BadAccountId {
                        role: s.to_owned(),
                        account: suffix.to_owned(),
                    });
                }
                (role, Some(AccountRef::Id(suffix.to_owned())))
            }
            Some((role, suffix)) if names::is_alias(suffix) => {
                (role, Some(AccountRef::Alias(suffix.to_owned())))
            }
            // No `@`, or a suffix that cannot be an account: all of it is the name.
            None | Some(_) => (s, None),
        };
        let (path, name) = names::split_path_name(role)?;
        Ok(Self {
            name,
            path,
            account,
            partition: None,
        })
    }

    /// Builds a spec from a `[path/]name` taken literally (an `@` in it is part of the name) and an
    /// explicit account reference, as in a mapping-file object with `account_id`.
    pub fn with_account(name: &str, account: &str) -> Result<RoleSpec, RoleSpecError> {
        let account = AccountRef::parse(account)?;
        let (path, name) = names::split_path_name(name.trim())?;
        Ok(Self {
            name,
            path,
            account: Some(account),
            partition: None,
        })
    }

    /// The role name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role path: `/` or `/a/b/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The account, if the string named one.
    pub fn account(&self) -> Option<&AccountRef> {
        self.account.as_ref()
    }

    /// The partition, if the string was an ARN.
    pub fn partition(&self) -> Option<Partition> {
        self.partition
    }
}

impl From<RoleArn> for RoleSpec {
    fn from(arn: RoleArn) -> Self {
        Self {
            name: arn.name().to_owned(),
            path: arn.path().to_owned(),
            account: Some(AccountRef::Id(arn.account_id().to_owned())),
            partition: Some(arn.partition()),
        }
    }
}

/// The canonical string: the ARN when a partition is known, else `path/name[@account]` (no leading `/`).
impl fmt::Display for RoleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            name,
            path,
            account,
            partition,
        } = self;
        if let (Some(p), Some(acct)) = (partition, account) {
            return write!(f, "arn:{p}:iam::{acct}:role{path}{name}");
        }
        // `@x,y` or `@a/b` would read as "no name before `@`": keep the leading slash then.
        let short = &path[1..];
        let path = if short.starts_with('@') || short.is_empty() && name.starts_with('@') {
            path.as_str()
        } else {
            short
        };
        write!(f, "{path}{name}")?;
        match account {
            Some(acct) => write!(f, "@{acct}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AccountRef {
        AccountRef::Id(s.into())
    }
    fn alias(s: &str) -> AccountRef {
        AccountRef::Alias(s.into())
    }

    #[test]
    fn parses_role_strings() {
        // (input, path, name, account, partition, canonical)
        let cases = [
            ("web", "/", "web", None, None, "web"),
            ("  web-api \n", "/", "web-api", None, None, "web-api"),
            (
                "service-role/web",
                "/service-role/",
                "web",
                None,
                None,
                "service-role/web",
            ),
            ("/team/a/web", "/team/a/", "web", None, None, "team/a/web"),
            (
                "web@123456789012",
                "/",
                "web",
                Some(id("123456789012")),
                None,
                "web@123456789012",
            ),
            (
                "web@012345678901",
                "/",
                "web",
                Some(id("012345678901")),
                None,
                "web@012345678901",
            ),
            (
                "web@prod",
                "/",
                "web",
                Some(alias("prod")),
                None,
                "web@prod",
            ),
            (
                "team/web@shared-services",
                "/team/",
                "web",
                Some(alias("shared-services")),
                None,
                "team/web@shared-services",
            ),
            (
                "ci@github.com",
                "/",
                "ci",
                Some(alias("github.com")),
                None,
                "ci@github.com",
            ),
            (
                "a@b@123456789012",
                "/",
                "a@b",
                Some(id("123456789012")),
                None,
                "a@b@123456789012",
            ),
            (
                "user+tag@x+y",
                "/",
                "user+tag@x+y",
                None,
                None,
                "user+tag@x+y",
            ),
            (
                "arn:aws:iam::123456789012:role/web",
                "/",
                "web",
                Some(id("123456789012")),
                Some(Partition::Aws),
                "arn:aws:iam::123456789012:role/web",
            ),
            (
                " arn:aws-us-gov:iam::123456789012:role/team/web ",
                "/team/",
                "web",
                Some(id("123456789012")),
                Some(Partition::AwsUsGov),
                "arn:aws-us-gov:iam::123456789012:role/team/web",
            ),
        ];
        for (input, path, name, account, partition, canonical) in cases {
            let spec = RoleSpec::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(spec.path(), path, "{input:?}");
            assert_eq!(spec.name(), name, "{input:?}");
            assert_eq!(spec.account().cloned(), account, "{input:?}");
            assert_eq!(spec.partition(), partition, "{input:?}");
            assert_eq!(spec.to_string(), canonical, "{input:?}");
            assert_eq!(
                RoleSpec::parse(canonical),
                Ok(spec),
                "canonical form of {input:?} round-trips"
            );
        }
    }

    #[test]
    fn rejects_bad_role_strings() {
        let cases: [(&str, RoleSpecError); 10] = [
            ("", RoleSpecError::Empty),
            ("   ", RoleSpecError::Empty),
            ("web@", RoleSpecError::MissingAccount("web@".into())),
            ("@prod", RoleSpecError::MissingName("@prod".into())),
            (
                "web@12345",
                RoleSpecError::BadAccountId {
                    role: "web@12345".into(),
                    account: "12345".into(),
                },
            ),
            ("web/", RoleSpecError::Name(IamNameError::EmptyName)),
            (
                "a//web",
                RoleSpecError::Name(IamNameError::EmptyPathSegment("/a//".into())),
            ),
            (
                "my role",
                RoleSpecError::Name(IamNameError::NameChar {
                    name: "my role".into(),
                    ch: ' ',
                }),
            ),
            (
                "arn:aws-mars:iam::123456789012:role/x",
                RoleSpecError::Arn(RoleArnError::UnknownPartition("aws-mars".into())),
            ),
            (
                "arn:aws:iam::123456789012:user/x",
                RoleSpecError::Arn(RoleArnError::NotARole(
                    "arn:aws:iam::123456789012:user/x".into(),
                )),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(RoleSpec::parse(input), Err(want), "{input:?}");
        }
        assert!(matches!(
            RoleSpec::parse(&"x".repeat(65)),
            Err(RoleSpecError::Name(IamNameError::NameTooLong(_)))
        ));
    }

    /// Found by the `docker_settings` and `role_string` fuzz targets: `IAM_ROLE=/@x,y` is the role
    /// named `@x,y` (and `/@a/=` the role `=` under the path `/@a/`), but it printed as `@x,y`,
    /// which does not parse back (nothing before the `@`).
    #[test]
    fn regression_fuzz_name_starting_with_at_prints_back_to_itself() {
        for raw in [
            "/@...IM.A._ROLE,ION",
            "/@x,y",
            "@x,y@prod",
            "/@x,y@123456789012",
        ] {
            let spec = RoleSpec::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(spec.name().starts_with('@'), "{raw}: {spec:?}");
            let printed = spec.to_string();
            assert_eq!(
                RoleSpec::parse(&printed).as_ref(),
                Ok(&spec),
                "{raw} printed as {printed}"
            );
        }
    }

    #[test]
    fn with_account_takes_the_name_literally() {
        let spec = RoleSpec::with_account("ci@github.com", "123456789012")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (spec.name(), spec.account().cloned()),
            ("ci@github.com", Some(id("123456789012")))
        );
        assert_eq!(RoleSpec::parse(&spec.to_string()), Ok(spec));
        let spec = RoleSpec::with_account("team/web", " prod ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (spec.path(), spec.account().cloned()),
            ("/team/", Some(alias("prod")))
        );
        assert_eq!(
            RoleSpec::with_account("web", "a b"),
            Err(RoleSpecError::BadAccount("a b".into()))
        );
        assert_eq!(
            RoleSpec::with_account("web", "1234"),
            Err(RoleSpecError::BadAccount("1234".into()))
        );
    }
}
