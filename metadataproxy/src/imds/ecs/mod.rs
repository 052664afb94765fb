//! `ECS_ENDPOINT`: the container-credentials protocol at `GET /v1/credentials`, for SDKs given
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
//!
//! The caller is identified exactly as for IMDS (same chain, same credential cache), so this route
//! never hands out anything the caller could not get from the IAM routes. In addition the request
//! must carry, as `Authorization`, the token of the caller's own container — its
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` read now through the container's root, else its
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN` (compared in constant time; never logged): a caller in no
//! known container, in one that sets no token, or whose token file cannot be read, is refused.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

mod token_file;

use super::iam::Iam;
use super::response::{self, Body};
use crate::containers::{Authorization, short};
use crate::creds::Secret;
use crate::docker::CallerContainer;
use crate::identity::ConnInfo;
use futures_util::future::BoxFuture;

/// The path SDKs are pointed at: `http://169.254.170.23/v1/credentials`.
pub const PATH: &str = "/v1/credentials";

/// The container a caller runs in, as far as this route cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerToken {
    /// The container's name (for logs).
    pub container: String,
    /// The token it expects.
    pub token: Expected,
}

/// The token a caller's container expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// It sets neither variable.
    Unset,
    /// Its `AWS_CONTAINER_AUTHORIZATION_TOKEN`, or its token file's content.
    Token(Secret),
    /// Its `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` could not be read.
    Unreadable {
        /// The path inside the container.
        path: String,
        /// Why (for the log only).
        reason: String,
    },
}

/// Finds the authorization token of the caller's container.
pub trait CallerTokens: Send + Sync + fmt::Debug {
    /// The caller's container and its token; `None`: the caller is in no known container.
    fn token<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Option<CallerToken>>;
}

/// Docker containers, found as the identification chain finds them.
impl CallerTokens for CallerContainer {
    fn token<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Option<CallerToken>> {
        Box::pin(async move {
            let found = self.find(conn).await?;
            let token = match &found.authorization {
                Authorization::Unset => Expected::Unset,
                Authorization::Token(token) => Expected::Token(token.clone()),
                Authorization::File(path) => {
                    match token_file::read(found.pid, &found.id, found.cgroup.as_deref(), path)
                        .await
                    {
                        Ok(token) => Expected::Token(token),
                        Err(e) => Expected::Unreadable {
                            path: path.clone(),
                            reason: e.to_string(),
                        },
                    }
                }
            };
            Some(CallerToken {
                container: format!("{} ({})", found.name, short(&found.id)),
                token,
            })
        })
    }
}

/// The success document, as the ECS agent and EKS Pod Identity agent write it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
    role_arn: String,
}

/// The route, when `ECS_ENDPOINT` is on.
#[derive(Debug)]
pub struct Ecs {
    /// Where callers' tokens come from.
    pub tokens: Arc<dyn CallerTokens>,
}

/// Why a request was refused before its credentials were looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoHeader,
    NoContainer,
    NoToken,
    TokenFileUnreadable,
    WrongToken,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Self::NoHeader => StatusCode::UNAUTHORIZED,
            Self::NoContainer | Self::NoToken | Self::TokenFileUnreadable | Self::WrongToken => {
                StatusCode::FORBIDDEN
            }
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::NoHeader => "the Authorization header is missing",
            Self::NoContainer => "the caller is in no known container",
            Self::NoToken => "the caller's container sets no AWS_CONTAINER_AUTHORIZATION_TOKEN",
            Self::TokenFileUnreadable => {
                "the caller's container's AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE cannot be read"
            }
            Self::WrongToken => {
                "the Authorization header is not the caller's AWS_CONTAINER_AUTHORIZATION_TOKEN"
            }
        }
    }
}

impl Ecs {
    /// A route checking tokens with `tokens`.
    pub fn new(tokens: Arc<dyn CallerTokens>) -> Self {
        Self { tokens }
    }

    /// Answers `GET /v1/credentials` from the connection `conn`, with `iam`'s chain and cache.
    pub async fn handle<B>(&self, iam: &Iam, req: &Request<B>, conn: &ConnInfo) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "use GET",
            );
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let identity = conn.identity().clone();
        let header = req.headers().get(AUTHORIZATION);
        // Without a header the answer is 401 whoever asks: no container lookup, no token file read.
        let found = match header {
            Some(_) => self.tokens.token(conn).await,
            None => None,
        };
        let container = found.as_ref().map(|f| f.container.as_str());
        if let Err(refusal) = check(header, found.as_ref()) {
            if let Some(Expected::Unreadable { path, reason }) = found.as_ref().map(|f| &f.token) {
                crate::refused!(WARN, &identity, peer = %conn.peer, container, token_file = %path, error = %reason, "cannot read the caller's AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: refused");
            } else {
                crate::refused!(INFO, &identity, peer = %conn.peer, container, reason = refusal.message(), "refused container-credentials request");
            }
            let code = if refusal == Refusal::NoHeader {
                "Unauthorized"
            } else {
                "AccessDenied"
            };
            return error(refusal.status(), code, refusal.message());
        }
        let caller = iam.chain.identify(conn).await;
        let Some((_, source)) = &caller.assignment else {
            crate::refused!(INFO, &identity, peer = %conn.peer, container, "no role for caller");
            return error(StatusCode::NOT_FOUND, "NotFound", "no role for this caller");
        };
        let (creds, resolution) = match iam.credentials(&caller, conn).await {
            Ok(found) => found,
            Err(resp) => return resp,
        };
        if creds.delivery.first_for(&caller.identity) {
            tracing::info!(
                target: "audit",
                caller = %caller.identity,
                peer = %conn.peer,
                container,
                role_arn = %resolution.arn,
                session = %creds.assumed_role_arn.rsplit('/').next().unwrap_or_default(),
                tags = resolution.key.context.as_deref().map(tracing::field::display),
                access_key = %format_args!("…{}", creds.key_hint()),
                source = source.as_str(),
                imds = "ecs",
                "credentials served"
            );
        }
        let doc = CredentialsDoc {
            access_key_id: &creds.access_key_id,
            secret_access_key: creds.secret_access_key.expose(),
            token: creds.session_token.expose(),
            expiration: response::timestamp(creds.expiration),
            role_arn: resolution.arn.to_string(),
        };
        response::with_type(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()),
            "application/json",
        )
    }
}

/// The answer to a caller that reached the daemon straight (no kernel record) while the eBPF
/// redirect is attached, and that `EBPF_DIRECT_CALLERS` does not name.
pub fn record_less() -> Response<Body> {
    error(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        "this route needs the caller's identity: connect to 169.254.170.23, not to the daemon's own address",
    )
}

/// Whether `header` is the token of the caller's container `found`.
fn check(header: Option<&HeaderValue>, found: Option<&CallerToken>) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::NoHeader)?;
    let found = found.ok_or(Refusal::NoContainer)?;
    let token = match &found.token {
        Expected::Unset => return Err(Refusal::NoToken),
        Expected::Unreadable { .. } => return Err(Refusal::TokenFileUnreadable),
        Expected::Token(token) => token,
    };
    if bool::from(header.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// An error in the ECS agent's style: `{"code": …, "message": …}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message });
    response::with_type(
        status,
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        "application/json",
    )
}

#[cfg(test)]
mod tests;
