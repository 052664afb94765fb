//! The limit: a bare hyper 1 server answering the same credentials bytes to every request (and a
//! fixed token to `PUT`s, so the IMDSv2 sequence has a limit too).
//!
//! Run as its own process (`cargo xtask bench-bare-server`, hidden) so its memory and CPU are its
//! own, on the same runtime and HTTP settings as the daemon: multi-thread tokio, HTTP/1.1, no delay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a `PUT` gets: a fixed IMDSv2-token-sized string.
const TOKEN: &[u8] = b"AQAEAFakeBenchTokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

/// Serves the contents of `body` on `addr` until killed.
pub fn serve(addr: SocketAddr, body: &Path) -> Result<()> {
    let body =
        Bytes::from(std::fs::read(body).with_context(|| format!("reading {}", body.display()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let bytes = if req.method() == Method::PUT {
                    Bytes::from_static(TOKEN)
                } else {
                    body.clone()
                };
                let mut resp = Response::new(Full::new(bytes));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
