//! An HTTP front (loopback TCP) for dockerd's unix socket that answers `500` to the inspection of
//! chosen containers, as a dockerd that cannot describe them does, and passes every other request
//! through, event streams included; it counts the inspections of each container.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use crate::accept::AcceptLoop;

/// What the relay answers in place of dockerd.
const BROKEN: &str =
    r#"{"message":"injected by the test: cannot describe this container right now"}"#;

#[derive(Debug, Default)]
struct Shared {
    broken: HashSet<String>,
    inspections: HashMap<String, usize>,
}

/// The relay; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct FaultyDockerRelay {
    server: AcceptLoop,
    shared: Arc<Mutex<Shared>>,
}

impl FaultyDockerRelay {
    /// Relays 127.0.0.1:<new port> to the unix socket at `target`.
    pub fn start(target: PathBuf) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = Arc::clone(&shared);
        let server = AcceptLoop::start("faulty Docker relay", move |inbound| {
            serve(inbound, target.clone(), Arc::clone(&state))
        });
        Self { server, shared }
    }

    /// `tcp://127.0.0.1:<port>`, for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.server.addr())
    }

    /// Answers `500` to every inspection of container `id` (its full id) from now on (`true`),
    /// or passes them to dockerd again.
    pub fn break_inspection(&self, id: &str, broken: bool) {
        let mut shared = self.lock();
        if broken {
            shared.broken.insert(id.to_owned());
        } else {
            shared.broken.remove(id);
        }
    }

    /// How many times container `id` was inspected through the relay.
    pub fn inspections(&self, id: &str) -> usize {
        self.lock().inspections.get(id).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves one inbound connection: each request is answered here or on a new connection to dockerd.
async fn serve(inbound: TcpStream, target: PathBuf, shared: Arc<Mutex<Shared>>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let target = target.clone();
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer(req, &target, &shared).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(inbound), service)
        .await;
}

async fn answer(
    req: Request<Incoming>,
    target: &PathBuf,
    shared: &Mutex<Shared>,
) -> Response<Body> {
    if let Some(id) = inspected(req.uri().path()) {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        *shared.inspections.entry(id.to_owned()).or_insert(0) += 1;
        if shared.broken.contains(id) {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, BROKEN);
        }
    }
    match forward(req, target).await {
        Ok(resp) => resp,
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("relay: {e}")),
    }
}

/// The request on a connection of its own to dockerd; its answer streams back as it comes.
async fn forward(
    req: Request<Incoming>,
    target: &PathBuf,
) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = UnixStream::connect(target).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let resp = sender.send_request(req).await?;
    Ok(resp.map(BodyExt::boxed))
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The container id of an inspection path: `/v1.47/containers/{id}/json` or without the version.
fn inspected(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    let mut first = parts.next()?;
    if first.starts_with('v') && first[1..].starts_with(|c: char| c.is_ascii_digit()) {
        first = parts.next()?;
    }
    match (first, parts.next(), parts.next(), parts.next()) {
        ("containers", Some(id), Some("json"), None) if !id.is_empty() => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::inspected;

    #[test]
    fn finds_the_inspected_container_and_nothing_else() {
        assert_eq!(inspected("/v1.47/containers/abc/json"), Some("abc"));
        assert_eq!(inspected("/containers/abc/json"), Some("abc"));
        assert_eq!(inspected("/v1.47/containers/json"), None);
        assert_eq!(inspected("/v1.47/containers/abc/logs"), None);
        assert_eq!(inspected("/v1.47/events"), None);
        assert_eq!(inspected("/version"), None);
    }
}
