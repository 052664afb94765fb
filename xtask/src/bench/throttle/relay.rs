//! The throttling STS relay: an HTTP server on 127.0.0.1 that forwards the daemon's STS requests
//! to moto and, once switched on, answers AWS's `Throttling` error to every AssumeRole beyond a
//! rate; it records every AssumeRole it receives (when, which role, throttled or passed).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The rate limit's window.
const WINDOW: Duration = Duration::from_secs(1);
/// Longest moto may take to answer a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// One AssumeRole the relay received.
#[derive(Debug, Clone)]
pub struct Call {
    /// When its whole request had arrived.
    pub at: Instant,
    /// The role's name (the last segment of `RoleArn`).
    pub role: String,
    /// Answered `Throttling` (otherwise forwarded to moto).
    pub throttled: bool,
}

/// The AssumeRole calls passed within the last second: the relay's rate limit, a sliding window
/// as AWS's limits behave.
#[derive(Debug, Default)]
struct Window {
    /// When each was passed, oldest first.
    passed: VecDeque<Instant>,
}

impl Window {
    /// Whether an AssumeRole arriving at `now` passes when at most `limit` may pass within any
    /// second (`None`: no limit). A call that passes is remembered, limit or not, so switching
    /// the limit on counts the calls of the second before.
    fn admit(&mut self, now: Instant, limit: Option<usize>) -> bool {
        while self
            .passed
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.passed.pop_front();
        }
        let pass = limit.is_none_or(|most| self.passed.len() < most);
        if pass {
            self.passed.push_back(now);
        }
        pass
    }
}

#[derive(Debug, Default)]
struct State {
    limit: Option<usize>,
    window: Window,
    calls: Vec<Call>,
    /// Requests moto did not answer (the relay answered `502`).
    forward_errors: usize,
}

#[derive(Debug)]
struct Shared {
    /// moto's endpoint, `http://127.0.0.1:<port>`.
    target: String,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an AssumeRole for `role` arriving now; whether it is to be throttled, and the
    /// call's number (for the error's request id).
    fn decide(&self, role: String) -> (bool, usize) {
        let mut st = self.lock();
        // Read under the lock: the calls are recorded in the order of their times.
        let at = Instant::now();
        let limit = st.limit;
        let throttled = !st.window.admit(at, limit);
        st.calls.push(Call {
            at,
            role,
            throttled,
        });
        (throttled, st.calls.len())
    }
}

/// The running relay; stops serving (every connection) when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `target` (moto's endpoint, `http://127.0.0.1:<port>`),
    /// passing everything until [`Self::throttle_above`].
    pub async fn start(target: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the STS relay on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: target.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            state: Mutex::default(),
        });
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Owned here: aborting this task drops every connection with it.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&serving);
                connections.spawn(async move {
                    let service =
                        service_fn(move |req: Request<Incoming>| answer(Arc::clone(&shared), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_STS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, an AssumeRole that finds `per_second` others passed within the last second
    /// is answered `Throttling`.
    pub fn throttle_above(&self, per_second: usize) {
        self.shared.lock().limit = Some(per_second);
    }

    /// Every AssumeRole received so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// How many requests moto did not answer.
    pub fn forward_errors(&self) -> usize {
        self.shared.lock().forward_errors
    }

    /// Waits until `count` AssumeRole calls have passed in all.
    pub async fn wait_passed(&self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let passed = self.calls().iter().filter(|c| !c.throttled).count();
            if passed >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the STS relay passed {passed} AssumeRole calls within {timeout:?}, expected {count}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most of `times` within any one-second window (`[t, t + 1 s)`).
pub fn busiest_second(times: &[Instant]) -> usize {
    let mut times = times.to_vec();
    times.sort_unstable();
    let mut first = 0;
    let mut most = 0;
    for (last, t) in times.iter().enumerate() {
        while t.duration_since(times[first]) >= WINDOW {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// Answers one request: `Throttling` for an AssumeRole over the rate, moto's answer otherwise.
async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ));
        }
    };
    if let Some(role) = assumed_role(&body) {
        let (throttled, number) = shared.decide(role);
        if throttled {
            return Ok(throttling(number));
        }
    }
    Ok(match forward(&shared, parts, body).await {
        Ok(resp) => resp,
        Err(e) => {
            shared.lock().forward_errors += 1;
            plain(StatusCode::BAD_GATEWAY, format!("relay to moto: {e:#}"))
        }
    })
}

/// AWS's answer to a throttled query-protocol call (`400`, `<Code>Throttling</Code>`); `number`
/// makes its request id unique.
fn throttling(number: usize) -> Response<Full<Bytes>> {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
         <Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>\
         <RequestId>7e1a0000-0000-4000-8000-{number:012x}</RequestId></ErrorResponse>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    resp
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}

/// Headers that belong to one hop (and the length, which the body sets again).
fn end_to_end(name: &HeaderName) -> bool {
    ![
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ]
    .contains(&name.as_str())
}

/// Sends the request to moto as it came (its `Host` set to moto's) and returns moto's answer.
async fn forward(shared: &Shared, parts: Parts, body: Bytes) -> Result<Response<Full<Bytes>>> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", shared.target).parse()?;
    let mut out = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if end_to_end(name) && name != HOST {
            out = out.header(name, value);
        }
    }
    let resp = tokio::time::timeout(
        FORWARD_TIMEOUT,
        shared.client.request(out.body(Full::new(body))?),
    )
    .await
    .context("moto did not answer in time")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut back = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if end_to_end(name) {
            back = back.header(name, value);
        }
    }
    Ok(back.body(Full::new(body))?)
}

/// The role of a query-protocol AssumeRole request (`Action=AssumeRole&…&RoleArn=…`); `None`
/// for any other request.
fn assumed_role(form: &[u8]) -> Option<String> {
    let form = std::str::from_utf8(form).ok()?;
    let mut action = None;
    let mut arn = None;
    for pair in form.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "Action" => action = Some(form_value(value)),
            "RoleArn" => arn = Some(form_value(value)),
            _ => {}
        }
    }
    if action.as_deref() != Some("AssumeRole") {
        return None;
    }
    let arn = arn.unwrap_or_default();
    Some(arn.rsplit('/').next().unwrap_or_default().to_owned())
}

/// One `application/x-www-form-urlencoded` value, decoded (`+` is a space, `%XX` a byte; a `%`
/// not followed by two hex digits is kept as it is).
fn form_value(raw: &str) -> String {
    let raw = raw.replace('+', " ");
    let mut pieces = raw.split('%');
    let mut out: Vec<u8> = pieces.next().unwrap_or_default().as_bytes().to_vec();
    for piece in pieces {
        let byte = piece
            .get(..2)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(byte) = byte {
            out.push(byte);
            // `get(..2)` succeeded: 2 is a character boundary.
            out.extend_from_slice(&piece.as_bytes()[2..]);
        } else {
            out.push(b'%');
            out.extend_from_slice(piece.as_bytes());
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn the_window_passes_at_most_the_limit_within_any_second() {
        let t = Instant::now();
        let mut w = Window::default();
        assert!(w.admit(at(t, 0), Some(2)));
        assert!(w.admit(at(t, 100), Some(2)));
        assert!(!w.admit(at(t, 200), Some(2)), "a third within the second");
        assert!(!w.admit(at(t, 999), Some(2)), "the first is 999 ms old");
        assert!(
            w.admit(at(t, 1000), Some(2)),
            "the first has left the window"
        );
        assert!(
            !w.admit(at(t, 1050), Some(2)),
            "100 ms and 1000 ms are within"
        );
        assert!(w.admit(at(t, 1100), Some(2)));
    }

    #[test]
    fn without_a_limit_everything_passes_and_counts_once_the_limit_is_on() {
        let t = Instant::now();
        let mut w = Window::default();
        for ms in [0, 10, 20, 30] {
            assert!(w.admit(at(t, ms), None));
        }
        assert!(
            !w.admit(at(t, 500), Some(4)),
            "four passed within the second"
        );
        assert!(w.admit(at(t, 1005), Some(4)), "the first has left it");
    }

    #[test]
    fn the_busiest_second_is_a_half_open_window() {
        let t = Instant::now();
        let tenth: Vec<Instant> = (0..10).map(|i| at(t, i * 100)).collect();
        assert_eq!(busiest_second(&tenth), 10);
        let mut eleven = tenth.clone();
        eleven.push(at(t, 1000));
        assert_eq!(
            busiest_second(&eleven),
            10,
            "0 ms and 1000 ms are a second apart"
        );
        eleven.push(at(t, 999));
        assert_eq!(busiest_second(&eleven), 11);
        let spread = [at(t, 1200), at(t, 0), at(t, 990), at(t, 500)];
        assert_eq!(busiest_second(&spread), 3, "unsorted input");
        assert_eq!(busiest_second(&[]), 0);
    }

    #[test]
    fn assume_role_requests_name_their_role() {
        let body = b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbench-throttle-0007&RoleSessionName=a+b";
        assert_eq!(assumed_role(body).as_deref(), Some("bench-throttle-0007"));
        assert_eq!(
            assumed_role(b"Action=GetCallerIdentity&Version=2011-06-15"),
            None
        );
        assert_eq!(assumed_role(b"\xff\xfe"), None);
        assert_eq!(form_value("a+b%2Fc"), "a b/c");
        assert_eq!(form_value("100%"), "100%");
        assert_eq!(form_value("%zz%4"), "%zz%4");
        assert_eq!(form_value("%+1"), "% 1");
    }

    #[test]
    fn throttling_is_aws_query_error() {
        let resp = throttling(5);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = format!("{:?}", resp.body());
        assert!(body.contains("<Code>Throttling</Code>"), "{body}");
        assert!(body.contains("<Type>Sender</Type>"), "{body}");
        assert!(body.contains("000000000005</RequestId>"), "{body}");
    }

    /// A stand-in for moto: answers `moto saw <body>` to everything.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let host = req.headers().get(HOST).cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text =
                            format!("moto saw {} at {host:?}", String::from_utf8_lossy(&body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_relay_forwards_then_throttles_assume_role_above_the_rate() {
        let moto = echo().await;
        let relay = Relay::start(format!("http://{moto}")).await.unwrap();
        let post =
            |body: &'static str| client::once(None, relay.addr, "POST", "/", &[], body.as_bytes());
        let assume = "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr1";
        let resp = post(assume).await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(
            resp.text().starts_with("moto saw Action=AssumeRole"),
            "{}",
            resp.text()
        );
        assert!(
            resp.text().contains(&moto.to_string()),
            "Host is moto's: {}",
            resp.text()
        );

        relay.throttle_above(2);
        assert_eq!(
            post(assume).await.unwrap().status,
            200,
            "the second in the window"
        );
        let resp = post(assume).await.unwrap();
        assert_eq!(resp.status, 400);
        assert!(resp.text().contains("<Code>Throttling</Code>"));
        let other = post("Action=GetCallerIdentity").await.unwrap();
        assert_eq!(other.status, 200, "only AssumeRole is throttled");

        let calls = relay.calls();
        let seen: Vec<(&str, bool)> = calls
            .iter()
            .map(|c| (c.role.as_str(), c.throttled))
            .collect();
        assert_eq!(seen, [("r1", false), ("r1", false), ("r1", true)]);
        assert_eq!(relay.forward_errors(), 0);
    }
}
