//! The real [`Sts`]: aws-sdk-sts and aws-sdk-iam with the aws-config default credential chain.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::timeout::TimeoutConfig;

use super::ecs_patch::PatchedEcsProvider;
use super::{CacheKey, Credentials, Secret, Sts, StsError, StsErrorKind};
use crate::clock::Clock;
use futures_util::future::BoxFuture;

/// AWS clients for `sts:AssumeRole` and `iam:GetRole`.
#[derive(Debug, Clone)]
pub struct AwsSts {
    sts: aws_sdk_sts::Client,
    iam: aws_sdk_iam::Client,
    clock: std::sync::Arc<dyn Clock>,
    /// The daemon's own credentials chain (what the clients sign with).
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
}

impl AwsSts {
    /// Loads the daemon's own AWS configuration.
    ///
    /// Region: `region` (`AWS_REGION`), else the shared config profile, else `us-east-1`; never the
    /// metadata service, which on a host running this daemon may be redirected to the daemon itself.
    /// Endpoints honour `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL_IAM` (aws-config does).
    pub async fn load(
        region: Option<String>,
        patch_ecs_allowed_host: Option<&str>,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
            .or_else(aws_config::profile::ProfileFileRegionProvider::new())
            .or_else(aws_config::Region::from_static("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(15))
                    .build(),
            );
        if let Some(patched) = patch_ecs_allowed_host.and_then(patched_ecs_provider) {
            tracing::info!(
                "daemon credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI on the host PATCH_ECS_ALLOWED_HOSTS allows"
            );
            loader = loader.credentials_provider(patched);
        }
        let config = loader.load().await;
        Self {
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&config)
                    .retry_classifier(super::no_throttle_retry::NoRetryOnThrottling)
                    .build(),
            ),
            iam: aws_sdk_iam::Client::new(&config),
            clock,
            credentials: config.credentials_provider(),
        }
    }

    /// `sts:GetCallerIdentity`: the ARN of the daemon's own AWS identity (needs no permission).
    pub async fn caller_identity(&self) -> Result<String, StsError> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| classify("sts:GetCallerIdentity", &e))?;
        Ok(out.arn().unwrap_or_default().to_owned())
    }

    /// The daemon's own credentials from the default chain (no call to AWS): the last four
    /// characters of their access key id, or why there are none.
    pub async fn own_key_hint(&self) -> Result<String, String> {
        use aws_credential_types::provider::ProvideCredentials as _;
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| "no credentials provider is configured".to_owned())?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(e).to_string())?;
        let id = creds.access_key_id();
        let hint = id.char_indices().rev().nth(3).map_or(id, |(i, _)| &id[i..]);
        Ok(hint.to_owned())
    }

    /// The region the clients use.
    pub fn region(&self) -> Option<String> {
        self.sts.config().region().map(ToString::to_string)
    }
}

/// The patched container-credentials provider, when `AWS_CONTAINER_CREDENTIALS_FULL_URI` names `host`.
fn patched_ecs_provider(host: &str) -> Option<PatchedEcsProvider> {
    let uri = std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI").ok()?;
    let token = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .ok()
        .or_else(|| {
            let file = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").ok()?;
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_owned())
        });
    PatchedEcsProvider::for_host(host, &uri, token)
}

fn classify<E, R>(operation: &'static str, err: &SdkError<E, R>) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let kind = match code.as_deref() {
                Some(c) if super::no_throttle_retry::THROTTLING_CODES.contains(&c) => {
                    StsErrorKind::Throttled
                }
                Some("InternalFailure" | "ServiceUnavailable" | "InternalError") => {
                    StsErrorKind::Unavailable
                }
                Some(
                    "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "UnrecognizedClientException",
                ) => StsErrorKind::NoCredentials,
                _ => StsErrorKind::Denied,
            };
            let message = e.message().unwrap_or("no message").to_owned();
            StsError {
                operation,
                kind,
                code,
                message,
            }
        }
        SdkError::DispatchFailure(d) if d.is_user() || d.as_other().is_some() => {
            let message = aws_smithy_types::error::display::DisplayErrorContext(err).to_string();
            let kind = if message.contains("credentials") {
                StsErrorKind::NoCredentials
            } else {
                StsErrorKind::Unavailable
            };
            StsError {
                operation,
                kind,
                code: None,
                message,
            }
        }
        other => StsError {
            operation,
            kind: StsErrorKind::Unavailable,
            code: None,
            message: aws_smithy_types::error::display::DisplayErrorContext(other).to_string(),
        },
    }
}

impl Sts for AwsSts {
    fn assume_role<'a>(
        &'a self,
        key: &'a CacheKey,
        duration: Duration,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            let op = "sts:AssumeRole";
            let mut call = self
                .sts
                .assume_role()
                .role_arn(key.role_arn.as_ref())
                .role_session_name(key.session_name.as_ref())
                .set_external_id(key.external_id.as_deref().map(str::to_owned))
                .duration_seconds(i32::try_from(duration.as_secs()).unwrap_or(3600));
            if let Some(context) = &key.context {
                for (k, v) in &context.tags {
                    let tag = aws_sdk_sts::types::Tag::builder().key(k).value(v).build();
                    call = call.tags(tag.map_err(|e| StsError {
                        operation: op,
                        kind: StsErrorKind::Denied,
                        code: None,
                        message: format!("session tag `{k}`: {e}"),
                    })?);
                }
                for k in &context.transitive {
                    call = call.transitive_tag_keys(k);
                }
                call = call.set_source_identity(context.source_identity.clone());
            }
            let out = call.send().await.map_err(|e| classify(op, &e))?;
            let malformed = |what: &str| StsError {
                operation: op,
                kind: StsErrorKind::Unavailable,
                code: None,
                message: format!("response has no {what}"),
            };
            let c = out.credentials().ok_or_else(|| malformed("Credentials"))?;
            let expiration =
                SystemTime::try_from(*c.expiration()).map_err(|_| malformed("valid Expiration"))?;
            let user = out.assumed_role_user();
            Ok(Credentials {
                access_key_id: c.access_key_id().to_owned(),
                secret_access_key: Secret::new(c.secret_access_key().to_owned()),
                session_token: Secret::new(c.session_token().to_owned()),
                expiration,
                last_updated: self.clock.now(),
                assumed_role_arn: user.map(|u| u.arn().to_owned()).unwrap_or_default(),
                assumed_role_id: user
                    .map(|u| u.assumed_role_id().to_owned())
                    .unwrap_or_default(),
                delivery: super::Delivery::default(),
            })
        })
    }

    fn role_arn<'a>(
        &'a self,
        path: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StsError>> {
        Box::pin(async move {
            let op = "iam:GetRole";
            let out = self
                .iam
                .get_role()
                .role_name(name)
                .send()
                .await
                .map_err(|e| classify(op, &e))?;
            let role = out.role().ok_or_else(|| StsError {
                operation: op,
                kind: StsErrorKind::Unavailable,
                code: None,
                message: "response has no Role".into(),
            })?;
            // A bare name (path `/`) takes the role wherever it lives, as Lyft did; a name given
            // with a path must match it.
            if path != "/" && role.path() != path {
                return Err(StsError {
                    operation: op,
                    kind: StsErrorKind::Denied,
                    code: Some("NoSuchEntity".into()),
                    message: format!("role {name} has path {} not {path}", role.path()),
                });
            }
            Ok(role.arn().to_owned())
        })
    }
}
