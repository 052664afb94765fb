//! The STS and IAM calls the daemon makes, behind a trait so the cache can be tested with a fake.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{CacheKey, Credentials};

/// What the daemon asks of AWS.
pub trait Sts: Send + Sync + std::fmt::Debug + 'static {
    /// `sts:AssumeRole` for the key's role, external id and session name.
    fn assume_role<'a>(
        &'a self,
        key: &'a CacheKey,
        duration: Duration,
    ) -> BoxFuture<'a, Result<Credentials, StsError>>;

    /// `iam:GetRole`: the ARN of the role `name`; when `path` is not `/`, the role must live there.
    fn role_arn<'a>(
        &'a self,
        path: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StsError>>;
}

/// Who is to blame for a failed call, which decides what the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsErrorKind {
    /// AWS refused: the role does not exist, does not trust us, or the external id is wrong.
    Denied,
    /// AWS asked us to slow down.
    Throttled,
    /// AWS could not be reached, timed out, or failed on its side.
    Unavailable,
    /// The daemon has no usable AWS credentials of its own.
    NoCredentials,
}

impl StsErrorKind {
    /// The `kind` label of `metadataproxy_sts_errors_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::NoCredentials => "no_credentials",
        }
    }
}

/// A failed STS or IAM call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({kind:?}): {message}")]
pub struct StsError {
    /// `sts:AssumeRole` or `iam:GetRole`.
    pub operation: &'static str,
    /// The class of failure.
    pub kind: StsErrorKind,
    /// AWS's error code, if it answered (e.g. `AccessDenied`).
    pub code: Option<String>,
    /// A human-readable description (never contains secrets).
    pub message: String,
}

impl StsError {
    /// The IMDS `Code` to report to the caller.
    pub fn imds_code(&self) -> &'static str {
        match self.kind {
            StsErrorKind::Denied => "AssumeRoleUnauthorizedAccess",
            StsErrorKind::Throttled => "Throttling",
            StsErrorKind::Unavailable => "ServiceUnavailable",
            StsErrorKind::NoCredentials => "InternalError",
        }
    }
}
