//! Building IMDS responses: plain text, JSON, and IMDS-style JSON errors.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The response body type of the whole API.
pub type Body = Full<Bytes>;

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), "text/plain")
}

/// A response with the given content type.
pub fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response (IMDS serves credentials as `text/plain` JSON; so do we, like the real one).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    with_type(status, Bytes::from(body), "text/plain")
}

/// An IMDS-style JSON error: `{"Code": …, "Message": …, "LastUpdated": …}`, never an HTML page.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    now: std::time::SystemTime,
) -> Response<Body> {
    json(
        status,
        &serde_json::json!({
            "Code": code,
            "Message": message,
            "LastUpdated": timestamp(now),
        }),
    )
}

/// Ties the generic error a caller gets to the daemon's log line holding the details: 16 hex
/// digits, random (unguessable, so a caller cannot point at another caller's log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    /// A new id.
    pub fn new() -> Self {
        static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut raw = [0_u8; 8];
        match getrandom::fill(&mut raw) {
            Ok(()) => Self(u64::from_le_bytes(raw)),
            // No entropy (it does not happen): still unique within this process.
            Err(_) => Self(FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An IMDS-style error whose details stay in the log: `what` happened, and the request id that
/// finds the log line (the caller never sees AWS's text: it can name the daemon's own role,
/// account and instance).
pub fn opaque_error(
    status: StatusCode,
    code: &str,
    what: &str,
    id: RequestId,
    now: std::time::SystemTime,
) -> Response<Body> {
    error(
        status,
        code,
        &format!("{what} (request id {id}; the metadata proxy's log has the details)"),
        now,
    )
}

/// IMDS timestamps: UTC, whole seconds, `Z`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Which IMDS protocol version a request used (for logs and audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsVersion {
    /// No session token.
    V1,
    /// A valid session token.
    V2,
}

impl ImdsVersion {
    /// `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// The 404 every unknown or refused path gets.
pub fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_whole_seconds_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_827_723_456);
        assert_eq!(timestamp(t), "2026-11-28T01:02:03Z");
    }

    #[test]
    fn request_ids_are_16_hex_digits_and_differ() {
        let (a, b) = (RequestId::new().to_string(), RequestId::new().to_string());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn errors_are_json() {
        let r = error(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            "sts down",
            UNIX_EPOCH,
        );
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
    }
}
