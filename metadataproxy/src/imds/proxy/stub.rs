//! A stand-in upstream IMDS for tests: a hyper server on 127.0.0.1:0 that records every request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub method: Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
}

/// What the stub answers: status, body, extra headers, and a delay before answering.
pub(super) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Seen, &[Seen]) -> Reply + Send + Sync;

/// A running stub; stops when dropped.
pub(super) struct Stub {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    /// Starts a stub answering with `handler(request, earlier requests)`.
    pub async fn start(handler: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = tokio::spawn(serve(listener, Arc::clone(&seen), handler));
        Self { addr, seen, task }
    }

    /// The base URI to give `Upstream::new`.
    pub fn uri(&self) -> Uri {
        format!("http://{}", self.addr)
            .parse()
            .unwrap_or_else(|e| panic!("uri: {e}"))
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests had this method.
    pub fn count(&self, method: &Method) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }
}

async fn serve(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>, handler: Arc<Handler>) {
    while let Ok((stream, _)) = listener.accept().await {
        let seen = Arc::clone(&seen);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(answer(&req, &seen, &*handler).await) }
            });
            // Connection errors (the client hung up on a slow reply) are expected in tests.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: &Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
) -> Response<Full<Bytes>> {
    let now = Seen {
        method: req.method().clone(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(String::new, ToString::to_string),
        headers: req.headers().clone(),
    };
    let reply = {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let reply = handler(&now, &seen);
        seen.push(now);
        reply
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        let value = value.parse().unwrap_or_else(|e| panic!("header: {e}"));
        response.headers_mut().insert(name, value);
    }
    response
}
