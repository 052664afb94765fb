//! The IMDS HTTP API: routing, `IMDSv2` tokens, IAM handlers, passthrough and mock tree.

pub mod conn;
pub mod ecs;
pub mod iam;
pub mod memo;
pub mod mock;
pub mod path;
pub mod proxy;
pub mod response;
pub mod route;
pub mod service;
pub mod site;
pub mod token;

/// The status for a failed passthrough: 504 when the upstream timed out, 502 otherwise.
pub fn proxy_status(e: &proxy::UpstreamError) -> http::StatusCode {
    match e {
        proxy::UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        proxy::UpstreamError::MethodNotAllowed => http::StatusCode::METHOD_NOT_ALLOWED,
        proxy::UpstreamError::BadQuery => http::StatusCode::BAD_REQUEST,
        proxy::UpstreamError::Forbidden => http::StatusCode::NOT_FOUND,
        _ => http::StatusCode::BAD_GATEWAY,
    }
}
