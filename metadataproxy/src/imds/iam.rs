//! The IAM routes, answered locally: role listing, `iam/info`, and the caller's own credentials.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;

use super::memo::{Noted, Recall};
use super::path::Category;
use super::response::{self, Body, ImdsVersion, RequestId, not_found};
use crate::cgroup::CgroupPaths;
use crate::clock::Clock;
use crate::creds::{CredentialCache, Credentials, StsError, StsErrorKind};
use crate::creds::{Resolution, ResolveFailure, Resolver};
use crate::identity::{Caller, Chain, ConnInfo};
use crate::policy::{Gate, Refused, Subject};
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
    /// `ROLE_POLICY_FILE`: which roles each caller may assume.
    pub policy: Gate,
    /// cgroup id → path, for the policy's `cgroup` rules (eBPF redirect in force).
    pub cgroups: Option<Arc<CgroupPaths>>,
}

impl Iam {
    /// The caller's credentials from its connection's memory, when the route asks for them and
    /// what the connection remembers still holds (no lookup, no lock but the connection's own).
    pub fn recall(
        route: &Category<'_>,
        conn: &ConnInfo,
        version: ImdsVersion,
        recall: Recall<'_>,
    ) -> Option<Response<Body>> {
        let Category::IamCredentials(asked) = route else {
            return None;
        };
        recall.memo.recall(asked, recall.began, |creds, source| {
            crate::metrics::identified(Some(source));
            crate::metrics::cache_lookup(true);
            tracing::debug!(caller = %conn.identity(), access_key = %format_args!("…{}", creds.key_hint()), imds = version.as_str(), "credentials served again");
            credentials_response(creds)
        })
    }

    /// Answers one IAM route for the caller on `conn` by identifying it and looking its role and
    /// credentials up; with `recall`, the credentials are remembered by the connection.
    pub async fn handle(
        &self,
        route: &Category<'_>,
        conn: &ConnInfo,
        version: ImdsVersion,
        recall: Option<Recall<'_>>,
    ) -> Response<Body> {
        // Before anything is looked up: what is remembered of this answer holds only while
        // nothing it depends on changes from here.
        let remember = recall.map(|r| (r.memo, Noted::now(r.began)));
        let caller = self.chain.identify(conn).await;
        crate::metrics::identified(caller.assignment.as_ref().map(|(_, source)| *source));
        let Some((assignment, source)) = &caller.assignment else {
            crate::refused!(INFO, &caller.identity, peer = %conn.peer, "no role for caller");
            return not_found();
        };
        let role_name = assignment.role.name();
        if self.policy.is_on()
            && matches!(route, Category::IamListing | Category::IamCredentialsList)
        {
            // With a policy, a refused role is not even listed: the caller learns at once why.
            if let Err(resp) = self.resolve(&caller, conn).await {
                return resp;
            }
        }
        match route {
            Category::IamListing => response::text(StatusCode::OK, "info\nsecurity-credentials/"),
            Category::IamCredentialsList => response::text(StatusCode::OK, role_name.to_owned()),
            Category::IamCredentials(asked) if *asked != role_name => {
                crate::refused!(INFO, &caller.identity, asked = %asked, role = %role_name, "caller asked for a role that is not its own");
                not_found()
            }
            Category::IamCredentials(_) | Category::IamInfo => {
                let (creds, resolution) = match self.credentials(&caller, conn).await {
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
                        tags = resolution.key.context.as_deref().map(tracing::field::display),
                        access_key = %format_args!("…{}", creds.key_hint()),
                        source = source.as_str(),
                        imds = version.as_str(),
                        "credentials served"
                    );
                } else {
                    tracing::debug!(caller = %caller.identity, access_key = %format_args!("…{}", creds.key_hint()), imds = version.as_str(), "credentials served again");
                }
                if let Some((memo, noted)) = remember {
                    memo.remember(
                        noted,
                        self.clock.now(),
                        self.cache.threshold(),
                        role_name,
                        *source,
                        &creds,
                    );
                }
                credentials_response(&creds)
            }
            _ => not_found(),
        }
    }

    /// The credentials of an identified caller on `conn` and its role's ARN, or the error
    /// response.
    pub(super) async fn credentials(
        &self,
        caller: &Caller,
        conn: &ConnInfo,
    ) -> Result<(Arc<Credentials>, Arc<Resolution>), Response<Body>> {
        let resolution = self.resolve(caller, conn).await?;
        let creds = self.cache.get(&resolution.key).await.map_err(|e| {
            let id = RequestId::new();
            crate::refused!(WARN, &caller.identity, request_id = %id, role_arn = %resolution.arn, error = %e, "cannot obtain the caller's credentials");
            sts_error(&e, id, self.clock.now())
        })?;
        Ok((creds, resolution))
    }

    /// The resolution of the caller's role, if the role policy allows it; else the error
    /// response (and, for a refusal, an audit line).
    async fn resolve(
        &self,
        caller: &Caller,
        conn: &ConnInfo,
    ) -> Result<Arc<Resolution>, Response<Body>> {
        let Some((assignment, _)) = &caller.assignment else {
            return Err(not_found());
        };
        let resolution = self.resolver.resolve_shared(assignment).await.map_err(|e| {
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
        if self.policy.is_on() {
            let cgroup = match &self.cgroups {
                Some(paths) => conn.cgroup_path(paths).await,
                None => None,
            };
            let subject = Subject {
                assigned_by: caller.assigned_by,
                workload: caller.workload.as_deref(),
                cgroup: cgroup.as_deref(),
            };
            if let Err(refused) =
                self.policy
                    .check(&subject, &resolution.arn, &resolution.key.role_arn)
            {
                audit_refusal(caller, conn, &subject, &resolution.arn, &refused);
                return Err(response::opaque_error(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "The role policy does not allow this caller the role it asks for",
                    RequestId::new(),
                    self.clock.now(),
                ));
            }
        }
        Ok(resolution)
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

/// The audit line of a role the policy refused (rate-limited per caller, like every refusal).
fn audit_refusal(
    caller: &Caller,
    conn: &ConnInfo,
    subject: &Subject<'_>,
    arn: &RoleArn,
    refused: &Refused,
) {
    if let crate::logging::Verdict::Log { suppressed } = crate::logging::admit(&caller.identity) {
        let workload = subject.workload;
        let label = |key| workload.and_then(|w| w.labels.get(key).map(String::as_str));
        tracing::warn!(
            target: "audit",
            caller = %caller.identity,
            peer = %conn.peer,
            container_id = workload.map(|w| w.id.as_str()),
            container_name = workload.map(|w| w.name.as_str()),
            namespace = label(crate::policy::NAMESPACE_LABEL),
            pod = label(crate::policy::POD_NAME_LABEL),
            cgroup = subject.cgroup,
            assigned_by = subject.assigned_by.as_str(),
            role_arn = %arn,
            rule = %refused.rule,
            reason = %refused.why,
            suppressed = (suppressed > 0).then_some(suppressed),
            "role refused by the role policy"
        );
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
