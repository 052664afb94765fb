//! Passthrough to the real IMDS (`METADATA_URL`) for non-IAM routes, with the daemon's own session.
//!
//! Only the canonical path is ever sent, never the caller's raw target, and no caller header is
//! forwarded: the API takes none. IAM, token and identity-credentials paths are refused here too,
//! as a second line behind the router.

mod allow;
mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thiserror::Error;

pub use self::allow::{AllowList, DEFAULT_LISTINGS, DEFAULT_SUBTREES};
use self::session::{Credential, Fetched, Session};
use super::path::{Category, ImdsPath, classify};
use super::token::{MAX_TTL_SECS, TOKEN_HEADER, TTL_HEADER, parse_ttl};
use crate::clock::{Clock, SystemClock};

/// Largest upstream body relayed to a caller.
pub const MAX_BODY: usize = 1 << 20;
/// Largest upstream token accepted (real ones are 56 characters).
const MAX_TOKEN_BODY: usize = 4096;

/// Why a request could not be forwarded. Caller faults map to 4xx, upstream faults to 502/504.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// The method is neither GET nor HEAD (caller fault: 405).
    #[error("method not allowed upstream")]
    MethodNotAllowed,
    /// The query string holds characters we refuse to forward (caller fault: 400).
    #[error("query string not forwardable")]
    BadQuery,
    /// The path is not in the allow-list, or is an IAM, token or host-credentials path (404).
    #[error("path not forwardable")]
    Forbidden,
    /// No URL could be built from `METADATA_URL` and the path (configuration fault: 502).
    #[error("cannot build upstream URL")]
    BadUri,
    /// The upstream could not be connected to (502).
    #[error("upstream unreachable")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The exchange failed after connecting: reset, malformed HTTP, broken body (502).
    #[error("upstream exchange failed")]
    Exchange(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No complete answer within the configured timeout (504).
    #[error("upstream timed out")]
    Timeout,
    /// The upstream body is larger than [`MAX_BODY`] (502).
    #[error("upstream body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// The upstream token PUT answered with an unexpected status (502).
    #[error("upstream refused a session token with {0}")]
    TokenRefused(StatusCode),
    /// The upstream token PUT answered 200 with something that is not a usable token (502).
    #[error("upstream sent an unusable session token")]
    BadToken,
    /// The upstream still answered 401 after a fresh token (502).
    #[error("upstream rejected a fresh session token")]
    Unauthorized,
}

/// The real IMDS behind us, reached with a pooled HTTP/1 client.
pub struct Upstream {
    base: Uri,
    timeout: Duration,
    /// What may be forwarded.
    allowed: AllowList,
    client: Client<HttpConnector, Full<Bytes>>,
    session: Session,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The session holds the upstream token: leave it out.
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream at `base` (`http://host[:port]`; a base path is kept as a prefix). `timeout`
    /// bounds each forwarded request as a whole, token fetch and retry included.
    /// `allowed` limits what is forwarded.
    pub fn new(base: Uri, timeout: Duration, allowed: AllowList) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(connector);
        Self {
            base,
            timeout,
            allowed,
            client,
            session: Session::new(Arc::new(SystemClock)),
        }
    }

    /// Replaces the clock used for upstream token lifetimes (tests drive a `ManualClock`).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.session = Session::new(clock);
        self
    }

    /// Whether the allow-list lets `p` through (see [`AllowList::allows`]).
    pub fn allows(&self, p: &ImdsPath<'_>) -> bool {
        self.allowed.allows(p)
    }

    /// Forwards `method p?query` upstream; returns status, body and `Content-Type` only.
    pub async fn forward(
        &self,
        method: &Method,
        p: &ImdsPath<'_>,
        query: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, UpstreamError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(UpstreamError::MethodNotAllowed);
        }
        let forwardable = matches!(
            classify(p),
            Category::Other | Category::Root | Category::VersionRoot
        );
        if !forwardable || !self.allows(p) {
            return Err(UpstreamError::Forbidden);
        }
        let uri = self.uri(p.as_path(), query)?;
        tokio::time::timeout(self.timeout, self.exchange(method, &uri))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// One request with the current session credential, and one retry with a fresh one on 401.
    async fn exchange(
        &self,
        method: &Method,
        uri: &Uri,
    ) -> Result<Response<Full<Bytes>>, UpstreamError> {
        let credential = self.session.current(|| self.fetch_token()).await?;
        let response = self.send(method, uri, &credential).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        self.session.invalidate(credential.as_ref()).await;
        let credential = self.session.current(|| self.fetch_token()).await?;
        let response = self.send(method, uri, &credential).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::Unauthorized);
        }
        Ok(response)
    }

    async fn send(
        &self,
        method: &Method,
        uri: &Uri,
        credential: &Credential,
    ) -> Result<Response<Full<Bytes>>, UpstreamError> {
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        if let Some(token) = credential {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|_| UpstreamError::BadUri)?;
        let (status, content_type, body) = self.round_trip(request, MAX_BODY).await?;
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Ok(response)
    }

    /// `PUT /latest/api/token` for the daemon's own session.
    async fn fetch_token(&self) -> Result<Fetched, UpstreamError> {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(self.uri("/latest/api/token", None)?)
            .header(TTL_HEADER, MAX_TTL_SECS)
            .body(Full::new(Bytes::new()))
            .map_err(|_| UpstreamError::BadUri)?;
        let response = self.client.request(request).await.map_err(client_error)?;
        let status = response.status();
        if matches!(
            status,
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(Fetched::V1Only);
        }
        if status != StatusCode::OK {
            return Err(UpstreamError::TokenRefused(status));
        }
        // Believe a shorter lifetime if the upstream says so; never a longer one.
        let ttl = parse_ttl(response.headers().get(TTL_HEADER)).unwrap_or(MAX_TTL_SECS);
        let body = collect(response.into_body(), MAX_TOKEN_BODY).await?;
        let text = std::str::from_utf8(&body).map_err(|_| UpstreamError::BadToken)?;
        let mut token = HeaderValue::from_str(text.trim()).map_err(|_| UpstreamError::BadToken)?;
        if token.is_empty() {
            return Err(UpstreamError::BadToken);
        }
        token.set_sensitive(true);
        Ok(Fetched::Token(
            token,
            Duration::from_secs(u64::from(ttl.min(MAX_TTL_SECS))),
        ))
    }

    async fn round_trip(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, Option<HeaderValue>, Bytes), UpstreamError> {
        let response = self.client.request(request).await.map_err(client_error)?;
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(UpstreamError::BodyTooLarge);
        }
        let body = collect(body, limit).await?;
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        Ok((parts.status, content_type, body))
    }

    /// `base` + canonical `path` + checked `query`.
    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, UpstreamError> {
        let (Some(scheme), Some(authority)) = (self.base.scheme_str(), self.base.authority())
        else {
            return Err(UpstreamError::BadUri);
        };
        let prefix = self.base.path().trim_end_matches('/');
        let mut target = format!("{scheme}://{authority}{prefix}{path}");
        match query {
            None | Some("") => {}
            Some(q) if q.bytes().all(is_query_byte) => {
                target.push('?');
                target.push_str(q);
            }
            Some(_) => return Err(UpstreamError::BadQuery),
        }
        target.parse().map_err(|_| UpstreamError::BadUri)
    }
}

/// Query bytes we forward: RFC 3986 `pchar` minus `%`, plus `/` and `?`.
fn is_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b)
}

fn client_error(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Unreachable(e)
    } else {
        UpstreamError::Exchange(Box::new(e))
    }
}

async fn collect(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, UpstreamError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(UpstreamError::BodyTooLarge),
        Err(e) => Err(UpstreamError::Exchange(e)),
    }
}

#[cfg(test)]
mod stub;
#[cfg(test)]
mod tests;
