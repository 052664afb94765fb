//! `PATCH_ECS_ALLOWED_HOSTS`: the daemon's own credentials from `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! on a host the SDK would refuse (aws-vault's `--ecs-server` on a non-loopback address).
//!
//! The SDK only accepts plain-HTTP container-credential URIs on loopback and the ECS/EKS link-local
//! addresses. Lyft's proxy patched botocore's allow-list with this setting; we instead serve the
//! container-credentials protocol (GET the URI with the `Authorization` token, read
//! `AccessKeyId`/`SecretAccessKey`/`Token`/`Expiration`) for exactly that one host.

use std::time::Duration;

use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError, future};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Credentials from a container-credentials endpoint on an explicitly allowed host.
#[derive(Debug, Clone)]
pub struct PatchedEcsProvider {
    uri: http::Uri,
    authorization: Option<crate::creds::Secret>,
}

impl PatchedEcsProvider {
    /// The provider for `full_uri` if its host is `allowed_host`; `None` otherwise (the SDK's own
    /// chain then applies, with its own checks).
    pub fn for_host(
        allowed_host: &str,
        full_uri: &str,
        authorization: Option<String>,
    ) -> Option<Self> {
        let uri: http::Uri = full_uri.parse().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        (uri.scheme_str() == Some("http") && host.eq_ignore_ascii_case(allowed_host.trim())).then(
            || Self {
                uri,
                authorization: authorization.map(crate::creds::Secret::new),
            },
        )
    }

    async fn fetch(&self) -> provider::Result {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = http::Request::get(self.uri.clone());
        if let Some(token) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, token.expose());
        }
        let req = req
            .body(Empty::new())
            .map_err(CredentialsError::invalid_configuration)?;
        let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
            .await
            .map_err(|_| CredentialsError::provider_timed_out(Duration::from_secs(5)))?
            .map_err(CredentialsError::provider_error)?;
        if !resp.status().is_success() {
            return Err(CredentialsError::provider_error(format!(
                "{} answered {}",
                self.uri,
                resp.status()
            )));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(CredentialsError::provider_error)?
            .to_bytes();
        parse(&body)
    }
}

/// Parses the container-credentials JSON document.
fn parse(body: &[u8]) -> provider::Result {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| {
        CredentialsError::unhandled(format!(
            "container credentials are not the expected JSON: {e}"
        ))
    })?;
    let expiry = match doc.expiration {
        Some(t) => Some(
            humantime::parse_rfc3339_weak(&t)
                .map_err(|e| CredentialsError::unhandled(format!("bad Expiration {t:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(aws_credential_types::Credentials::new(
        doc.access_key_id,
        doc.secret_access_key,
        doc.token,
        expiry,
        "PatchedEcsProvider",
    ))
}

impl ProvideCredentials for PatchedEcsProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.fetch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allowed_host_is_taken() {
        assert!(
            PatchedEcsProvider::for_host("192.0.2.7", "http://192.0.2.7:9099/role", None).is_some()
        );
        assert!(
            PatchedEcsProvider::for_host("vault.local", "http://VAULT.local/x", None).is_some()
        );
        assert!(
            PatchedEcsProvider::for_host("192.0.2.7", "http://192.0.2.8:9099/role", None).is_none()
        );
        assert!(
            PatchedEcsProvider::for_host("192.0.2.7", "https://192.0.2.7/role", None).is_none()
        );
        assert!(PatchedEcsProvider::for_host("192.0.2.7", "not a uri", None).is_none());
    }

    #[test]
    fn debug_hides_the_authorization_token() {
        let p = PatchedEcsProvider::for_host("h", "http://h/", Some("auth-secret".into())).unwrap();
        assert!(!format!("{p:?}").contains("auth-secret"));
    }

    #[tokio::test]
    async fn fetches_credentials_with_the_authorization_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let body = r#"{"AccessKeyId":"AKIDPATCH","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            head
        });
        let p = PatchedEcsProvider::for_host(
            "127.0.0.1",
            &format!("http://127.0.0.1:{}/creds", addr.port()),
            Some("tok-1".into()),
        )
        .unwrap();
        let creds = p.provide_credentials().await.unwrap();
        assert_eq!(creds.access_key_id(), "AKIDPATCH");
        assert_eq!(creds.session_token(), Some("t"));
        let head = server.await.unwrap();
        assert!(head.starts_with("get /creds "), "{head}");
        assert!(head.contains("authorization: tok-1"), "{head}");
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(parse(b"{}").is_err());
        assert!(
            parse(br#"{"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"soon"}"#).is_err()
        );
    }
}
