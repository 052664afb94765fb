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

/// IMDS timestamps: UTC, whole seconds, `Z`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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
