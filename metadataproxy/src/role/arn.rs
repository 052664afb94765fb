//! IAM role ARNs and AWS partitions: parsing, validation and canonical formatting.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::names::{self, IamNameError};

/// An AWS partition: the first component of an ARN after `arn:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Partition {
    /// Commercial regions.
    #[default]
    Aws,
    /// China regions.
    AwsCn,
    /// `GovCloud` (US) regions.
    AwsUsGov,
    /// US ISO East/West.
    AwsIso,
    /// US ISOB East.
    AwsIsoB,
    /// EU ISOE West.
    AwsIsoE,
    /// US ISOF.
    AwsIsoF,
    /// AWS European Sovereign Cloud.
    AwsEusc,
}

impl Partition {
    /// Every known partition.
    pub const ALL: [Partition; 8] = [
        Self::Aws,
        Self::AwsCn,
        Self::AwsUsGov,
        Self::AwsIso,
        Self::AwsIsoB,
        Self::AwsIsoE,
        Self::AwsIsoF,
        Self::AwsEusc,
    ];

    /// The partition as written in ARNs, e.g. `aws-us-gov`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::AwsCn => "aws-cn",
            Self::AwsUsGov => "aws-us-gov",
            Self::AwsIso => "aws-iso",
            Self::AwsIsoB => "aws-iso-b",
            Self::AwsIsoE => "aws-iso-e",
            Self::AwsIsoF => "aws-iso-f",
            Self::AwsEusc => "aws-eusc",
        }
    }

    /// The partition a region belongs to, by the region-name prefixes of the AWS endpoint rules
    /// (`cn-`, `us-gov-`, `us-iso-`, `us-isob-`, `eu-isoe-`, `us-isof-`, `eusc-`); anything else is `aws`.
    pub fn for_region(region: &str) -> Partition {
        const PREFIXES: [(&str, Partition); 7] = [
            ("cn-", Partition::AwsCn),
            ("us-gov-", Partition::AwsUsGov),
            ("us-iso-", Partition::AwsIso),
            ("us-isob-", Partition::AwsIsoB),
            ("eu-isoe-", Partition::AwsIsoE),
            ("us-isof-", Partition::AwsIsoF),
            ("eusc-", Partition::AwsEusc),
        ];
        PREFIXES
            .iter()
            .find(|(prefix, _)| region.starts_with(prefix))
            .map_or(Partition::Aws, |&(_, p)| p)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Partition {
    type Err = RoleArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| RoleArnError::UnknownPartition(s.to_owned()))
    }
}

/// Why a string is not an IAM role ARN.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleArnError {
    /// The string does not have the `arn:<partition>:<service>:<region>:<account>:<resource>` shape.
    #[error("`{0}` is not an ARN (expected arn:<partition>:iam::<account>:role/<name>)")]
    Malformed(String),
    /// The partition is not one this proxy knows.
    #[error("unknown AWS partition `{0}`")]
    UnknownPartition(String),
    /// The ARN is for another service than IAM.
    #[error("ARN `{0}` is not an IAM ARN")]
    NotIam(String),
    /// IAM ARNs have an empty region; this one has one.
    #[error("IAM ARN `{0}` has a region; IAM ARNs have none")]
    HasRegion(String),
    /// The account component is not 12 digits.
    #[error("account id `{account}` in ARN `{arn}` is not 12 digits")]
    BadAccountId {
        /// The whole ARN.
        arn: String,
        /// The offending account component.
        account: String,
    },
    /// The resource is not `role/…` (for example `user/…` or `instance-profile/…`).
    #[error("ARN `{0}` is not a role ARN (resource must start with role/)")]
    NotARole(String),
    /// The role name or path breaks IAM's rules.
    #[error(transparent)]
    Name(#[from] IamNameError),
}

/// A fully resolved IAM role ARN: `arn:<partition>:iam::<account>:role<path><name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleArn {
    partition: Partition,
    account_id: String,
    path: String,
    name: String,
}

impl RoleArn {
    /// Builds an ARN from parts, checking the account id (12 digits), path (`/` or `/a/b/`) and name.
    pub fn new(
        partition: Partition,
        account_id: &str,
        path: &str,
        name: &str,
    ) -> Result<RoleArn, RoleArnError> {
        names::validate_path(path)?;
        names::validate_name(name)?;
        if !names::is_account_id(account_id) {
            let arn = format!("arn:{partition}:iam::{account_id}:role{path}{name}");
            return Err(RoleArnError::BadAccountId {
                arn,
                account: account_id.to_owned(),
            });
        }
        Ok(Self::from_valid(partition, account_id, path, name))
    }

    /// Builds an ARN from parts the caller has already validated.
    pub(crate) fn from_valid(
        partition: Partition,
        account_id: &str,
        path: &str,
        name: &str,
    ) -> Self {
        Self {
            partition,
            account_id: account_id.to_owned(),
            path: path.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Parses `arn:<partition>:iam::<12 digits>:role/<optional/path/>name`, e.g. an `iam:GetRole` result.
    pub fn parse(s: &str) -> Result<RoleArn, RoleArnError> {
        let malformed = || RoleArnError::Malformed(s.to_owned());
        let mut parts = s.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(malformed());
        };
        let partition: Partition = partition.parse()?;
        if service != "iam" {
            return Err(RoleArnError::NotIam(s.to_owned()));
        }
        if !region.is_empty() {
            return Err(RoleArnError::HasRegion(s.to_owned()));
        }
        if !names::is_account_id(account) {
            return Err(RoleArnError::BadAccountId {
                arn: s.to_owned(),
                account: account.to_owned(),
            });
        }
        let rest = resource
            .strip_prefix("role/")
            .ok_or_else(|| RoleArnError::NotARole(s.to_owned()))?;
        let (path, name) = names::split_path_name(rest)?;
        Ok(Self {
            partition,
            account_id: account.to_owned(),
            path,
            name,
        })
    }

    /// The partition.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The 12-digit account id.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The role path: `/` or `/a/b/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The role name (what `security-credentials/` lists).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance-profile ARN with the same partition, account, path and name (for `iam/info`).
    pub fn instance_profile_arn(&self) -> String {
        let Self {
            partition,
            account_id,
            path,
            name,
        } = self;
        format!("arn:{partition}:iam::{account_id}:instance-profile{path}{name}")
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            partition,
            account_id,
            path,
            name,
        } = self;
        write!(f, "arn:{partition}:iam::{account_id}:role{path}{name}")
    }
}

impl FromStr for RoleArn {
    type Err = RoleArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_arns() {
        let cases = [
            (
                "arn:aws:iam::123456789012:role/web",
                Partition::Aws,
                "/",
                "web",
            ),
            (
                "arn:aws:iam::123456789012:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS",
                Partition::Aws,
                "/aws-service-role/ecs.amazonaws.com/",
                "AWSServiceRoleForECS",
            ),
            (
                "arn:aws-cn:iam::000000000001:role/app/api",
                Partition::AwsCn,
                "/app/",
                "api",
            ),
            (
                "arn:aws-us-gov:iam::123456789012:role/ci@github.com",
                Partition::AwsUsGov,
                "/",
                "ci@github.com",
            ),
            (
                "arn:aws-iso-b:iam::123456789012:role/x",
                Partition::AwsIsoB,
                "/",
                "x",
            ),
            (
                "arn:aws-eusc:iam::123456789012:role/x",
                Partition::AwsEusc,
                "/",
                "x",
            ),
        ];
        for (input, partition, path, name) in cases {
            let arn = RoleArn::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (arn.partition(), arn.path(), arn.name()),
                (partition, path, name),
                "{input}"
            );
            assert_eq!(arn.to_string(), input, "round trip");
        }
    }

    #[test]
    fn rejects_bad_arns() {
        type Check = fn(&RoleArnError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("web", |e| matches!(e, RoleArnError::Malformed(_))),
            ("arn:aws:iam::123456789012", |e| {
                matches!(e, RoleArnError::Malformed(_))
            }),
            ("arn:aws-mars:iam::123456789012:role/x", |e| {
                *e == RoleArnError::UnknownPartition("aws-mars".into())
            }),
            ("arn:aws:sts::123456789012:assumed-role/x/y", |e| {
                matches!(e, RoleArnError::NotIam(_))
            }),
            ("arn:aws:iam:us-east-1:123456789012:role/x", |e| {
                matches!(e, RoleArnError::HasRegion(_))
            }),
            ("arn:aws:iam::12345:role/x", |e| {
                matches!(e, RoleArnError::BadAccountId { .. })
            }),
            ("arn:aws:iam::123456789012:user/x", |e| {
                matches!(e, RoleArnError::NotARole(_))
            }),
            ("arn:aws:iam::123456789012:role/", |e| {
                *e == RoleArnError::Name(IamNameError::EmptyName)
            }),
            ("arn:aws:iam::123456789012:role/a:b", |e| {
                matches!(e, RoleArnError::Name(_))
            }),
        ];
        for (input, check) in cases {
            let err = RoleArn::parse(input).expect_err(input);
            assert!(check(&err), "{input}: {err:?}");
        }
    }

    #[test]
    fn instance_profile() {
        let arn = RoleArn::parse("arn:aws-cn:iam::123456789012:role/team/web")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            arn.instance_profile_arn(),
            "arn:aws-cn:iam::123456789012:instance-profile/team/web"
        );
    }

    #[test]
    fn new_validates() {
        assert!(RoleArn::new(Partition::Aws, "123456789012", "/a/", "b").is_ok());
        assert!(matches!(
            RoleArn::new(Partition::Aws, "1234", "/", "b"),
            Err(RoleArnError::BadAccountId { .. })
        ));
        assert!(RoleArn::new(Partition::Aws, "123456789012", "a", "b").is_err());
    }

    #[test]
    fn partitions() {
        for p in Partition::ALL {
            assert_eq!(p.as_str().parse::<Partition>(), Ok(p));
        }
        let regions = [
            ("us-east-1", Partition::Aws),
            ("eu-west-3", Partition::Aws),
            ("cn-north-1", Partition::AwsCn),
            ("us-gov-west-1", Partition::AwsUsGov),
            ("us-iso-east-1", Partition::AwsIso),
            ("us-isob-east-1", Partition::AwsIsoB),
            ("eu-isoe-west-1", Partition::AwsIsoE),
            ("us-isof-south-1", Partition::AwsIsoF),
            ("eusc-de-east-1", Partition::AwsEusc),
        ];
        for (region, p) in regions {
            assert_eq!(Partition::for_region(region), p, "{region}");
        }
    }
}
