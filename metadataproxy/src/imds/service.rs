//! The request handler: routes a request to the token, IAM, mock or passthrough handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};

use super::iam::Iam;
use super::memo::Recall;
use super::mock::MockTree;
use super::path::{self, Category, ImdsPath};
use super::proxy::Upstream;
use super::response::{self, Body, ImdsVersion, not_found};
use super::route;
use super::token::{self, Tokens};
use crate::caller::Identity;
use crate::clock::Clock;
use crate::identity::{ConnInfo, refusal};
use crate::metrics::Route;

/// Where non-IAM routes go.
#[derive(Debug)]
pub enum Passthrough {
    /// `MOCK_API`: answered from the mock tree.
    Mock(MockTree),
    /// Proxy mode: forwarded to `METADATA_URL`.
    Proxy(Box<Upstream>),
}

/// The IMDS API.
#[derive(Debug)]
pub struct Imds {
    /// Answers the IAM routes.
    pub iam: Iam,
    /// Issues and checks session tokens.
    pub tokens: Tokens,
    /// Non-IAM routes.
    pub passthrough: Passthrough,
    /// `IMDSV2_REQUIRED`.
    pub imdsv2_required: bool,
    /// `ECS_ENDPOINT`: the container-credentials route; `None`: it is a 404.
    pub ecs: Option<super::ecs::Ecs>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Imds {
    /// Handles one request from the connection `conn`.
    pub async fn handle<B: Sync>(&self, req: &Request<B>, conn: &ConnInfo) -> Response<Body> {
        self.handle_routed(req, conn, None).await.0
    }

    /// [`Self::handle`], also naming the request's route for the metrics (the path is parsed
    /// and classified once, for both); `recall`: the connection's memory of its last
    /// credentials, and when the request began.
    ///
    /// What waits (identification and lookups, the upstream, the container-credentials route)
    /// runs in a future of its own, boxed: the common answers, ready at once, do not carry the
    /// size of the rare ones, and hyper moves this future a few times per request.
    pub async fn handle_routed<B: Sync>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        recall: Option<Recall<'_>>,
    ) -> (Response<Body>, Route) {
        let routed = path::route(req.uri().path());
        let route = route::of(routed.as_ref().ok().map(|(_, category)| category));
        let resp = match self.respond(req, conn, routed, recall) {
            Answer::Now(resp) => resp,
            Answer::Later(waiting) => waiting.await,
        };
        (resp, route)
    }

    fn respond<'a, B: Sync>(
        &'a self,
        req: &'a Request<B>,
        conn: &'a ConnInfo,
        routed: Result<(ImdsPath<'a>, Category<'a>), path::PathError>,
        recall: Option<Recall<'a>>,
    ) -> Answer<'a> {
        let heads = Heads::of(req.headers());
        if heads.body {
            // No IMDS request has a body; never read one (and close, so it is not parsed either).
            crate::refused!(INFO, conn.identity(), peer = %conn.peer, "refused a request with a body");
            let mut resp = response::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Content Too Large: metadata requests have no body\n",
            );
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return Answer::Now(resp);
        }
        let raw_path = req.uri().path();
        if raw_path == super::ecs::PATH {
            return match &self.ecs {
                Some(_) if !self.iam.chain.may_identify(conn) => {
                    refusal::record_less(conn.identity(), conn.peer, "ecs");
                    Answer::Now(super::ecs::record_less())
                }
                Some(ecs) => Answer::Later(Box::pin(ecs.handle(&self.iam, req, conn))),
                None => Answer::Now(not_found()),
            };
        }
        let (parsed, category) = match routed {
            Ok(routed) => routed,
            Err(e) => {
                crate::refused!(INFO, conn.identity(), peer = %conn.peer, path = %raw_path.escape_debug(), error = %e, "refused path");
                let status = if matches!(e, path::PathError::TooLong) {
                    StatusCode::URI_TOO_LONG
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Answer::Now(response::text(status, format!("Bad Request: {e}\n")));
            }
        };
        if needs_identity(&category) && !self.iam.chain.may_identify(conn) {
            refusal::record_less(
                conn.identity(),
                conn.peer,
                route::of(Some(&category)).label(),
            );
            return Answer::Now(response::text(
                StatusCode::FORBIDDEN,
                "Forbidden: this route needs the caller's identity; connect to 169.254.169.254, not to the daemon's own address\n",
            ));
        }
        let identity = conn.identity();
        if category == Category::Token {
            return Answer::Now(self.token(req.method(), &heads, identity));
        }
        let version = match self.check_token(&heads, identity) {
            Ok(v) => v,
            Err(resp) => return Answer::Now(resp),
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = response::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Answer::Now(resp);
        }
        match category {
            Category::IamListing
            | Category::IamInfo
            | Category::IamCredentialsList
            | Category::IamCredentials(_) => {
                if let Some(resp) =
                    recall.and_then(|recall| Iam::recall(&category, conn, version, recall))
                {
                    return Answer::Now(resp);
                }
                Answer::Later(Box::pin(async move {
                    self.iam.handle(&category, conn, version, recall).await
                }))
            }
            Category::IamOther | Category::HostIdentityCredentials => {
                crate::refused!(INFO, identity, peer = %conn.peer, path = %parsed.as_path(), "refused IAM path");
                Answer::Now(not_found())
            }
            // Token paths were answered above; listed here so the match stays exhaustive.
            Category::Token | Category::Root | Category::VersionRoot | Category::Other => {
                self.passthrough(req.method(), parsed, req.uri().query(), identity)
            }
        }
    }

    fn token(&self, method: &Method, heads: &Heads<'_>, identity: &Identity) -> Response<Body> {
        if method != Method::PUT {
            let mut resp = response::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed: use PUT for a token\n",
            );
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("PUT"));
            return resp;
        }
        if heads.forwarded {
            return response::text(
                StatusCode::FORBIDDEN,
                "Forbidden: token requests must not be proxied\n",
            );
        }
        let ttl = match token::parse_ttl(heads.ttl) {
            Ok(ttl) => ttl,
            Err(e) => {
                return response::text(StatusCode::BAD_REQUEST, format!("Bad Request: {e}\n"));
            }
        };
        let mut resp = response::text(StatusCode::OK, self.tokens.issue(identity, ttl));
        // The caller's own value when it is already the number's plain spelling (no copy).
        let echo = match heads.ttl {
            Some(v)
                if v.as_bytes().first() != Some(&b'0')
                    && v.as_bytes().iter().all(u8::is_ascii_digit) =>
            {
                v.clone()
            }
            _ => HeaderValue::from(ttl),
        };
        resp.headers_mut().insert(token::TTL.clone(), echo);
        resp
    }

    /// Checks the session token, if any. Without one, v1 is allowed unless `IMDSV2_REQUIRED`.
    #[expect(clippy::result_large_err, reason = "the error is the response to send")]
    fn check_token(
        &self,
        heads: &Heads<'_>,
        identity: &Identity,
    ) -> Result<ImdsVersion, Response<Body>> {
        let Some(value) = heads.token else {
            return if self.imdsv2_required {
                Err(response::text(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized: a session token is required\n",
                ))
            } else {
                Ok(ImdsVersion::V1)
            };
        };
        match self.tokens.validate(value.as_bytes(), identity) {
            Ok(()) => Ok(ImdsVersion::V2),
            Err(e) => {
                crate::refused!(INFO, identity, error = %e, "refused session token");
                Err(response::text(StatusCode::UNAUTHORIZED, "Unauthorized\n"))
            }
        }
    }

    fn passthrough<'a>(
        &'a self,
        method: &'a Method,
        p: ImdsPath<'a>,
        query: Option<&'a str>,
        caller: &'a Identity,
    ) -> Answer<'a> {
        match &self.passthrough {
            Passthrough::Mock(tree) => Answer::Now(match tree.get(&p) {
                Some(a) => response::with_type(StatusCode::OK, a.body, a.content_type),
                None => not_found(),
            }),
            Passthrough::Proxy(upstream) => {
                if !upstream.allows(&p) {
                    crate::refused!(INFO, caller, path = %p.as_path(), "refused path: not in PROXY_ALLOWED_PATHS");
                    return Answer::Now(response::text(
                        StatusCode::FORBIDDEN,
                        "Forbidden: path not allowed by PROXY_ALLOWED_PATHS\n",
                    ));
                }
                Answer::Later(Box::pin(async move {
                    match upstream.forward(method, &p, query).await {
                        Ok(resp) => resp,
                        Err(e) => {
                            crate::refused!(WARN, caller, path = %p.as_path(), error = %e, "upstream metadata service failed");
                            let status = super::proxy_status(&e);
                            response::text(
                                status,
                                format!(
                                    "{}: upstream metadata service: {e}\n",
                                    status.canonical_reason().unwrap_or("Error")
                                ),
                            )
                        }
                    }
                }))
            }
        }
    }
}

/// A request's answer: ready at once, or a boxed future of its own.
enum Answer<'a> {
    Now(Response<Body>),
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>),
}

/// Whether answering `category` depends on who the caller is (refused to callers that may not
/// be identified): tokens and every `iam/` path.
fn needs_identity(category: &Category<'_>) -> bool {
    match category {
        Category::Token
        | Category::IamListing
        | Category::IamInfo
        | Category::IamCredentialsList
        | Category::IamCredentials(_)
        | Category::IamOther => true,
        Category::HostIdentityCredentials
        | Category::Root
        | Category::VersionRoot
        | Category::Other => false,
    }
}

/// `X-Forwarded-For`: a token request carrying it came through a proxy.
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// Lengths of the names [`Heads::of`] looks for.
const XFF_LEN: usize = "x-forwarded-for".len();
const TE_LEN: usize = "transfer-encoding".len();
const CL_LEN: usize = "content-length".len();

/// The request headers the API looks at, found in one pass over the few headers a metadata
/// request has (not one hashed lookup each).
#[derive(Debug, Default)]
struct Heads<'r> {
    /// The request announces a body: any `Transfer-Encoding`, or a `Content-Length` other than 0.
    body: bool,
    /// The first `X-aws-ec2-metadata-token`.
    token: Option<&'r HeaderValue>,
    /// The first `X-aws-ec2-metadata-token-ttl-seconds`.
    ttl: Option<&'r HeaderValue>,
    /// An `X-Forwarded-For` is present.
    forwarded: bool,
}

impl<'r> Heads<'r> {
    fn of(headers: &'r http::HeaderMap) -> Self {
        let mut heads = Self::default();
        for (name, value) in headers {
            // The name's length first: most headers (`Host`, `User-Agent`, `Accept`) are then
            // passed over with one comparison.
            let len = name.as_str().len();
            if len == TE_LEN && *name == http::header::TRANSFER_ENCODING {
                heads.body = true;
            } else if len == CL_LEN && *name == http::header::CONTENT_LENGTH {
                heads.body |= value.as_bytes().iter().any(|&b| b != b'0');
            } else if len == token::TOKEN_HEADER.len() && *name == token::TOKEN {
                heads.token.get_or_insert(value);
            } else if len == token::TTL_HEADER.len() && *name == token::TTL {
                heads.ttl.get_or_insert(value);
            } else if len == XFF_LEN && *name == X_FORWARDED_FOR {
                heads.forwarded = true;
            }
        }
        heads
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
pub(super) mod tests;
