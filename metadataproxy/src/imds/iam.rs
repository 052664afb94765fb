//! The IAM routes, answered locally: role listing, `iam/info`, and the caller's own credentials.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;

use super::path::Category;
use super::response::{self, Body, ImdsVersion, RequestId, not_found};
use crate::clock::Clock;
use crate::creds::{CredentialCache, Credentials, StsError, StsErrorKind};
use crate::creds::{Resolution, ResolveFailure, Resolver};
use crate::identity::{Caller, Chain, ConnInfo};
use crate::role::RoleArn;

/// The credentials document, fields in the order the real service writes them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc<'a> {
    code: &'static str,
    last_updated: String,
    #[serde(rename = "Type")]
    kind: &'static str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
}

/// The `iam/info` document.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoDoc {
    code: &'static str,
    last_updated: String,
    instance_profile_arn: String,
    instance_profile_id: String,
}

/// Handles the IAM routes.
#[derive(Debug)]
pub struct Iam {
    /// Identifies callers.
    pub chain: Arc<Chain>,
    /// Turns role assignments into cache keys.
    pub resolver: Arc<Resolver>,
    /// Holds the credentials.
    pub cache: Arc<CredentialCache>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Iam {
    /// Answers one IAM route for the caller on `conn`.
    pub async fn handle(
        &self,
        route: &Category<'_>,
        conn: &ConnInfo,
        version: ImdsVersion,
    ) -> Response<Body> {
        let caller = self.chain.identify(conn).await;
        crate::metrics::identified(caller.assignment.as_ref().map(|(_, source)| *source));
        let Some((assignment, source)) = &caller.assignment else {
            crate::refused!(INFO, &caller.identity, peer = %conn.peer, "no role for caller");
            return not_found();
        };
        let role_name = assignment.role.name();
        match route {
            Category::IamListing => response::text(StatusCode::OK, "info\nsecurity-credentials/"),
            Category::IamCredentialsList => response::text(StatusCode::OK, role_name.to_owned()),
            Category::IamCredentials(asked) if *asked != role_name => {
                crate::refused!(INFO, &caller.identity, asked = %asked, role = %role_name, "caller asked for a role that is not its own");
                not_found()
            }
            Category::IamCredentials(_) | Category::IamInfo => {
                let (creds, resolution) = match self.credentials(&caller).await {
                    Ok(found) => found,
                    Err(resp) => return resp,
                };
                if matches!(route, Category::IamInfo) {
                    return Self::info(&creds, &resolution.arn);
                }
                // One audit line per credential set handed to a caller; its repeat fetches of the
                // same set are debug lines (a busy caller must not flood the audit log).
                if creds.delivery.first_for(&caller.identity) {
                    let workload = caller.workload.as_ref();
                    tracing::info!(
                        target: "audit",
                        caller = %caller.identity,
                        peer = %conn.peer,
                        container_id = workload.map(|w| w.id.as_str()),
                        container_name = workload.map(|w| w.name.as_str()),
                        role_arn = %resolution.arn,
                        session = %creds.assumed_role_arn.rsplit('/').next().unwrap_or_default(),
                        access_key = %format_args!("…{}", creds.key_hint()),
                        source = source.as_str(),
                        imds = version.as_str(),
                        "credentials served"
                    );
                } else {
                    tracing::debug!(caller = %caller.identity, access_key = %format_args!("…{}", creds.key_hint()), imds = version.as_str(), "credentials served again");
                }
                credentials_response(&creds)
            }
            _ => not_found(),
        }
    }

    /// The credentials of an identified caller and its role's ARN, or the error response.
    pub(super) async fn credentials(
        &self,
        caller: &Caller,
    ) -> Result<(Arc<Credentials>, Arc<Resolution>), Response<Body>> {
        let Some((assignment, _)) = &caller.assignment else {
            return Err(not_found());
        };
        let resolution = self.resolver.resolve(assignment).await.map_err(|e| {
            let id = RequestId::new();
            crate::refused!(WARN, &caller.identity, request_id = %id, role = %assignment.role, error = %e, "cannot resolve the caller's role");
            let now = self.clock.now();
            match e {
                ResolveFailure::Lookup(e) => sts_error(&e, id, now),
                _ => response::opaque_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InvalidRole",
                    "The role of this caller cannot be resolved",
                    id,
                    now,
                ),
            }
        })?;
        let creds = self.cache.get(&resolution.key).await.map_err(|e| {
            let id = RequestId::new();
            crate::refused!(WARN, &caller.identity, request_id = %id, role_arn = %resolution.arn, error = %e, "cannot obtain the caller's credentials");
            sts_error(&e, id, self.clock.now())
        })?;
        Ok((creds, resolution))
    }

    fn info(creds: &Credentials, arn: &RoleArn) -> Response<Body> {
        let doc = InfoDoc {
            code: "Success",
            last_updated: response::timestamp(creds.last_updated),
            instance_profile_arn: arn.instance_profile_arn(),
            instance_profile_id: instance_profile_id(&creds.assumed_role_id),
        };
        response::with_type(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default()),
            "text/plain",
        )
    }
}

/// The credentials document for `creds` (rendered once per credential set).
pub fn credentials_response(creds: &Credentials) -> Response<Body> {
    let body = creds.delivery.document(|| render_credentials(creds));
    response::with_type(StatusCode::OK, body, "text/plain")
}

fn render_credentials(creds: &Credentials) -> Bytes {
    let doc = CredentialsDoc {
        code: "Success",
        last_updated: response::timestamp(creds.last_updated),
        kind: "AWS-HMAC",
        access_key_id: &creds.access_key_id,
        secret_access_key: creds.secret_access_key.expose(),
        token: creds.session_token.expose(),
        expiration: response::timestamp(creds.expiration),
    };
    Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())
}

/// An `AIPA…` id derived from the role's unique id (`AROA…`), stable for the role.
fn instance_profile_id(assumed_role_id: &str) -> String {
    let unique = assumed_role_id.split(':').next().unwrap_or_default();
    let rest = unique.strip_prefix("AROA").unwrap_or(unique);
    format!("AIPA{rest}")
}

/// The response for a failed STS or IAM call: IMDS-style JSON, status and `Code` by who is to
/// blame, a generic message with the request id `id` of the log line that holds AWS's text.
fn sts_error(e: &StsError, id: RequestId, now: std::time::SystemTime) -> Response<Body> {
    let (status, what) = match e.kind {
        StsErrorKind::Denied => (
            StatusCode::BAD_GATEWAY,
            "AWS refused the credentials of this caller's role",
        ),
        StsErrorKind::Throttled => (
            StatusCode::SERVICE_UNAVAILABLE,
            "AWS is throttling credential requests; retry later",
        ),
        StsErrorKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "AWS STS cannot be reached; retry later",
        ),
        StsErrorKind::NoCredentials => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The metadata proxy cannot obtain credentials",
        ),
    };
    response::opaque_error(status, e.imds_code(), what, id, now)
}
