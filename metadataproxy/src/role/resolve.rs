//! Static role resolution: a parsed role string to an ARN, or to the `iam:GetRole` lookup it needs.

use thiserror::Error;

use super::account_map::AccountMap;
use super::arn::{Partition, RoleArn};
use super::names;
use super::spec::{AccountRef, RoleSpec};

/// The outcome of resolving a role without calling AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The ARN is known.
    Arn(RoleArn),
    /// No account is known: the caller must ask `iam:GetRole` for this role's ARN.
    NeedsLookup {
        /// The role path from the role string (`/` when none); the caller may check it against
        /// the path `iam:GetRole` returns.
        path: String,
        /// The role name to pass to `iam:GetRole`.
        name: String,
    },
}

/// Why a role cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResolveError {
    /// `role@alias` names an alias that `AWS_ACCOUNT_MAP` does not define.
    #[error("account alias `{0}` is not in AWS_ACCOUNT_MAP")]
    UnknownAccountAlias(String),
    /// `DEFAULT_ACCOUNT_ID` is not 12 digits.
    #[error("default account id `{0}` is not 12 digits")]
    BadDefaultAccount(String),
}

/// Resolves a role without network calls.
///
/// - an ARN is used as is (its own partition);
/// - `@<12 digits>` uses that account, `@alias` the account `accounts` maps it to;
/// - with no account, `default_account` (`DEFAULT_ACCOUNT_ID`) if given, else [`Resolved::NeedsLookup`].
///
/// Non-ARN forms get `default_partition`.
pub fn resolve(
    spec: &RoleSpec,
    accounts: &AccountMap,
    default_account: Option<&str>,
    default_partition: Partition,
) -> Result<Resolved, ResolveError> {
    let account_id = match spec.account() {
        Some(AccountRef::Id(id)) => id.as_str(),
        Some(AccountRef::Alias(alias)) => accounts
            .get(alias)
            .ok_or_else(|| ResolveError::UnknownAccountAlias(alias.clone()))?,
        None => match default_account.map(str::trim) {
            Some(id) if names::is_account_id(id) => id,
            Some(id) => return Err(ResolveError::BadDefaultAccount(id.to_owned())),
            None => {
                return Ok(Resolved::NeedsLookup {
                    path: spec.path().to_owned(),
                    name: spec.name().to_owned(),
                });
            }
        },
    };
    let partition = spec.partition().unwrap_or(default_partition);
    Ok(Resolved::Arn(RoleArn::from_valid(
        partition,
        account_id,
        spec.path(),
        spec.name(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(s: &str) -> Resolved {
        Resolved::Arn(RoleArn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn resolves() {
        let accounts = AccountMap::parse_json(r#"{"prod": "111111111111", "cn": 222222222222}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let lookup = |path: &str, name: &str| Resolved::NeedsLookup {
            path: path.into(),
            name: name.into(),
        };
        // (role, default account, default partition, expected)
        let cases = [
            ("web", None, Partition::Aws, Ok(lookup("/", "web"))),
            (
                "team/web",
                None,
                Partition::Aws,
                Ok(lookup("/team/", "web")),
            ),
            (
                "web",
                Some("333333333333"),
                Partition::Aws,
                Ok(arn("arn:aws:iam::333333333333:role/web")),
            ),
            (
                "team/web",
                Some("333333333333"),
                Partition::AwsCn,
                Ok(arn("arn:aws-cn:iam::333333333333:role/team/web")),
            ),
            (
                "web",
                Some("12345"),
                Partition::Aws,
                Err(ResolveError::BadDefaultAccount("12345".into())),
            ),
            (
                "web@444444444444",
                Some("333333333333"),
                Partition::Aws,
                Ok(arn("arn:aws:iam::444444444444:role/web")),
            ),
            (
                "web@prod",
                None,
                Partition::Aws,
                Ok(arn("arn:aws:iam::111111111111:role/web")),
            ),
            (
                "web@cn",
                None,
                Partition::AwsCn,
                Ok(arn("arn:aws-cn:iam::222222222222:role/web")),
            ),
            (
                "web@staging",
                Some("333333333333"),
                Partition::Aws,
                Err(ResolveError::UnknownAccountAlias("staging".into())),
            ),
            (
                "arn:aws-us-gov:iam::555555555555:role/a/web",
                Some("333333333333"),
                Partition::Aws,
                Ok(arn("arn:aws-us-gov:iam::555555555555:role/a/web")),
            ),
        ];
        for (role, default_account, partition, want) in cases {
            let spec = RoleSpec::parse(role).unwrap_or_else(|e| panic!("{role}: {e}"));
            assert_eq!(
                resolve(&spec, &accounts, default_account, partition),
                want,
                "{role}"
            );
        }
    }
}
