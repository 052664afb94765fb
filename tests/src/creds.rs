//! The credentials document the daemon serves, parsed strictly.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use serde::Deserialize;

use crate::{CREDS_PATH, Response, get};

/// `GET .../security-credentials/<role>` as IMDS serves it (field names exact).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ImdsCredentials {
    pub code: String,
    pub last_updated: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub expiration: String,
}

impl ImdsCredentials {
    /// Parses a 200 response; panics with the response otherwise.
    pub fn from_response(response: &Response) -> Self {
        assert_eq!(
            response.status, 200,
            "credentials request failed: {response:?}"
        );
        let creds: Self = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("not a credentials document ({e}): {response:?}"));
        assert_eq!(creds.code, "Success", "{creds:?}");
        assert_eq!(creds.kind, "AWS-HMAC", "{creds:?}");
        creds
    }
}

/// Fetches `role`'s credentials as caller `src` with IMDSv1; panics unless they are well formed.
pub async fn fetch_credentials(src: Ipv4Addr, daemon: SocketAddr, role: &str) -> ImdsCredentials {
    let response = get(src, daemon, &format!("{CREDS_PATH}{role}"), &[]).await;
    ImdsCredentials::from_response(&response)
}

/// An IMDS timestamp (`2026-11-29T01:02:03Z`); panics with the text when it is not one.
pub fn parse_time(text: &str) -> SystemTime {
    assert!(
        text.ends_with('Z') && !text.contains('.'),
        "timestamp {text:?} is not whole seconds in UTC with Z"
    );
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("bad timestamp {text:?}: {e}"))
}
