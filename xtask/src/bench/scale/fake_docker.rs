//! A fake Docker Engine API on a unix socket, answering what the daemon's bollard client asks
//! (`/_ping`, `/version`, `/containers/json`, `/containers/{id}/json`, and a `/events` stream
//! that stays open until [`FakeDocker::end_event_streams`]) for N synthetic running containers.
//!
//! Container `i` has a 64-hex id that encodes `i`, the address [`container_ip`]`(i)` (on `lo`,
//! so the bench can call from it) and `IAM_ROLE=`[`role`]`(i)`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// The API version the fake speaks (bollard lowers its own to it).
const API_VERSION: &str = "1.47";
/// End of every synthetic id; it starts with the container's number in 12 hex digits (the
/// short id the daemon logs).
const ID_SUFFIX: &str = "5ca1e00000000000000000000000000000000000000000000000";

/// The source address of synthetic container `i`: 127.1.0.1 upwards (never 127.0.0.1).
pub fn container_ip(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i + 1).expect("fewer than 2^32 containers");
    assert!(n < 1 << 16, "at most 65,535 synthetic containers");
    Ipv4Addr::from(0x7f01_0000 | n)
}

/// The role of synthetic container `i`, one of `roles`.
pub fn role(i: usize, roles: usize) -> String {
    format!("scale-role-{:02}", i % roles)
}

fn id(i: usize) -> String {
    format!("{i:012x}{ID_SUFFIX}")
}

fn number(id: &str) -> Option<usize> {
    let (n, rest) = id.split_at_checked(12)?;
    (rest == ID_SUFFIX).then(|| usize::from_str_radix(n, 16).ok())?
}

type Body_ = BoxBody<Bytes, Infallible>;

/// A running fake dockerd; stops serving when dropped.
#[derive(Debug)]
pub struct FakeDocker {
    socket: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    containers: usize,
    roles: usize,
    /// `/containers/json`, rendered once.
    listing: Bytes,
    /// The open `/events` streams.
    streams: Mutex<Vec<mpsc::Sender<Bytes>>>,
    /// Requests answered, by kind: list, inspect, events.
    lists: AtomicU64,
    inspects: AtomicU64,
}

impl FakeDocker {
    /// Serves `containers` synthetic containers over `roles` roles on the unix socket `socket`.
    pub fn start(socket: &Path, containers: usize, roles: usize) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("binding the fake Docker socket {}", socket.display()))?;
        let listing: Vec<serde_json::Value> = (0..containers)
            .map(|i| {
                serde_json::json!({
                    "Id": id(i), "Names": [format!("/scale-{i}")], "Image": "fake",
                    "State": "running", "Status": "Up"
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            containers,
            roles,
            listing: Bytes::from(serde_json::to_vec(&listing)?),
            streams: Mutex::default(),
            lists: AtomicU64::new(0),
            inspects: AtomicU64::new(0),
        });
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&serving);
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = shared.answer(req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            socket: socket.to_path_buf(),
            shared,
            task,
        })
    }

    /// `unix://<socket>`, for `DOCKER_URL`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Ends every open `/events` stream (as a dockerd restart would): the daemon reconnects and
    /// lists everything again. Returns how many streams were open.
    pub fn end_event_streams(&self) -> usize {
        let mut streams = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = streams.len();
        streams.clear();
        n
    }

    /// How many containers it serves.
    pub fn containers(&self) -> usize {
        self.shared.containers
    }

    /// (`/containers/json` answered, `/containers/{id}/json` answered) so far.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.shared.lists.load(Ordering::Relaxed),
            self.shared.inspects.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Shared {
    fn answer(&self, path: &str) -> Response<Body_> {
        // bollard prefixes the negotiated version: `/v1.47/containers/json`.
        let path = match path.strip_prefix("/v") {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            _ => path,
        };
        match path {
            "/_ping" => text(StatusCode::OK, "OK"),
            "/version" => json(
                StatusCode::OK,
                serde_json::json!({
                    "Version": "27.5.1-fake", "ApiVersion": API_VERSION, "MinAPIVersion": "1.24",
                    "Os": "linux", "Arch": "amd64"
                })
                .to_string()
                .into(),
            ),
            "/containers/json" => {
                self.lists.fetch_add(1, Ordering::Relaxed);
                json(StatusCode::OK, self.listing.clone())
            }
            "/events" => self.events(),
            _ => match path
                .strip_prefix("/containers/")
                .and_then(|p| p.strip_suffix("/json"))
            {
                Some(id) => self.inspect(id),
                None => not_found(path),
            },
        }
    }

    fn inspect(&self, id: &str) -> Response<Body_> {
        let Some(i) = number(id).filter(|i| *i < self.containers) else {
            return not_found(id);
        };
        self.inspects.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "Id": id, "Name": format!("/scale-{i}"),
            "State": {"Status": "running", "Running": true, "Restarting": false, "Pid": 0},
            "Config": {
                "Hostname": format!("c{i}"), "Domainname": "", "Image": "fake",
                "Env": [format!("IAM_ROLE={}", role(i, self.roles))], "Labels": {}
            },
            "NetworkSettings": {"Networks": {"bridge": {
                "IPAddress": container_ip(i).to_string(), "GlobalIPv6Address": ""
            }}}
        });
        json(StatusCode::OK, body.to_string().into())
    }

    /// A stream that sends nothing and stays open until [`FakeDocker::end_event_streams`].
    fn events(&self) -> Response<Body_> {
        let (tx, rx) = mpsc::channel(16);
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        let mut resp = Response::new(Events(rx).boxed());
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// The body of an `/events` response: whatever the channel sends, until it closes.
struct Events(mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Body_> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert("api-version", HeaderValue::from_static(API_VERSION));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Body_> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("api-version", HeaderValue::from_static(API_VERSION));
    resp
}

fn not_found(what: &str) -> Response<Body_> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "message": format!("No such container: {what}") })
            .to_string()
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_name_each_container() {
        assert_eq!(id(0).len(), 64);
        assert_eq!(number(&id(9_999)), Some(9_999));
        assert_eq!(container_ip(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(container_ip(9_999), Ipv4Addr::new(127, 1, 39, 16));
        assert_eq!(role(51, 50), "scale-role-01");
    }

    #[test]
    fn the_version_prefix_is_ignored() {
        let shared = Shared {
            containers: 2,
            roles: 1,
            listing: Bytes::new(),
            streams: Mutex::default(),
            lists: AtomicU64::new(0),
            inspects: AtomicU64::new(0),
        };
        assert_eq!(shared.answer("/v1.47/_ping").status(), StatusCode::OK);
        assert_eq!(
            shared
                .answer(&format!("/v1.53/containers/{}/json", id(1)))
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            shared
                .answer(&format!("/containers/{}/json", id(2)))
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}
