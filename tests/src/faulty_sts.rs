//! A fault-injecting HTTP proxy in front of moto's STS: it answers a configurable share of requests
//! with STS's `Throttling` error, a 503, a connection reset or a long delay — or, as AWS does,
//! `Throttling` for every `AssumeRole` beyond a rate ([`FaultySts::limit_rate`]) — passes the rest
//! on, and records every request it saw (when, which action and role, every form parameter) so
//! tests can count STS attempts and check exactly what the daemon sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::accept::AcceptLoop;

/// What the proxy does to a request chosen for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `400` with STS's `<Code>Throttling</Code>` XML error, as AWS sends when rate limiting.
    Throttle,
    /// `503` with a `ServiceUnavailable` XML error.
    Unavailable,
    /// `403` with an `AccessDenied` XML error whose message names the caller's own identity,
    /// as AWS writes it: [`DENIED_CALLER_ARN`] (its account [`DENIED_CALLER_ACCOUNT`], its
    /// instance [`DENIED_CALLER_INSTANCE`]) is not authorized to assume the requested role.
    Deny,
    /// The connection is reset (RST) without an answer.
    Reset,
    /// The request is held this long, then passed on.
    Delay(Duration),
}

/// The account of the identity [`Fault::Deny`] names: the daemon's own, not the roles'.
pub const DENIED_CALLER_ACCOUNT: &str = "210987654321";
/// The instance id in the identity [`Fault::Deny`] names (an instance profile's session name).
pub const DENIED_CALLER_INSTANCE: &str = "i-0a1b2c3d4e5f60718";
/// The identity [`Fault::Deny`] names: the daemon's own instance-profile session.
pub const DENIED_CALLER_ARN: &str =
    "arn:aws:sts::210987654321:assumed-role/metadataproxy-node/i-0a1b2c3d4e5f60718";

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed to moto untouched.
    Passed,
    /// Answered (or dropped, or delayed) by this fault.
    Faulted(Fault),
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct StsAttempt {
    /// When its head and body had arrived.
    pub at: Instant,
    /// The query-protocol `Action` (`AssumeRole`, …), empty if none.
    pub action: String,
    /// The `RoleArn` parameter, decoded, if any.
    pub role_arn: Option<String>,
    /// Every form parameter, decoded, in the order sent.
    pub params: Vec<(String, String)>,
    pub outcome: Outcome,
}

impl StsAttempt {
    /// The decoded value of the form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parameters whose names start with `prefix` (`Tags.member.`), sorted by name.
    pub fn params_starting(&self, prefix: &str) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .params
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .cloned()
            .collect();
        found.sort();
        found
    }
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Share of requests (0.0 to 1.0) that get `fault`.
    share: f64,
    /// Deterministic share: a request is faulted each time this reaches 1.
    credit: f64,
    /// Most `AssumeRole` requests passed within any second; more get `Throttling`.
    rate: Option<usize>,
    /// When the `AssumeRole` requests of the last second were passed.
    passed: VecDeque<Instant>,
    attempts: Vec<StsAttempt>,
}

/// The proxy; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct FaultySts {
    server: AcceptLoop,
    state: Arc<Mutex<State>>,
}

/// Largest request accepted (STS query requests are a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;

impl FaultySts {
    /// Proxies 127.0.0.1:<new port> to `target` (moto), passing every request until told otherwise.
    pub fn start(target: SocketAddr) -> Self {
        let state = Arc::new(Mutex::new(State {
            fault: Fault::Throttle,
            share: 0.0,
            credit: 0.0,
            rate: None,
            passed: VecDeque::new(),
            attempts: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = AcceptLoop::start("STS proxy", move |inbound| {
            handle(inbound, target, Arc::clone(&shared))
        });
        Self { server, state }
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_STS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// From now on, `share` (0.0 to 1.0) of the requests get `fault`; 0.0 passes everything.
    pub fn set(&self, fault: Fault, share: f64) {
        assert!((0.0..=1.0).contains(&share), "share {share} not in 0..=1");
        let mut st = self.lock();
        st.fault = fault;
        st.share = share;
        st.credit = 0.0;
    }

    /// Passes every request again.
    pub fn heal(&self) {
        self.set(Fault::Throttle, 0.0);
        self.lock().rate = None;
    }

    /// From now on, an `AssumeRole` request that finds `per_second` others passed within the
    /// last second is answered `Throttling` (a sliding window, as a rate limit; faults set with
    /// [`Self::set`] still apply to the requests it passes). `None` lifts the limit.
    pub fn limit_rate(&self, per_second: Option<usize>) {
        let mut st = self.lock();
        st.rate = per_second;
        st.passed.clear();
    }

    /// Every request received so far, oldest first.
    pub fn attempts(&self) -> Vec<StsAttempt> {
        self.lock().attempts.clone()
    }

    /// `AssumeRole` requests for `role_arn` received so far, oldest first.
    pub fn assume_role_attempts(&self, role_arn: &str) -> Vec<StsAttempt> {
        self.attempts()
            .into_iter()
            .filter(|a| a.action == "AssumeRole" && a.role_arn.as_deref() == Some(role_arn))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads one request (head and `Content-Length` body); `None` if the client went away.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0_u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0_u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, body))
}

/// `%XX` and `+` decoding of one form value.
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded value of form parameter `name` in `body`.
fn form_param(body: &str, name: &str) -> Option<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| form_decode(v))
}

/// An STS query-protocol XML error response that closes the connection.
fn xml_error(status: &str, kind: &str, code: &str, message: &str) -> String {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Forwards one request to `target` with `Connection: close` and returns moto's whole response,
/// its `Connection` header replaced by `close` (one request per connection on both sides).
async fn forward(target: SocketAddr, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut outbound = TcpStream::connect(target).await.ok()?;
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    let mut request = lines.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    outbound.write_all(&request).await.ok()?;
    let mut response = Vec::new();
    outbound.read_to_end(&mut response).await.ok()?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&response[end + 4..]);
    Some(out)
}

/// Serves one connection: one request, recorded, then faulted or forwarded.
async fn handle(mut inbound: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    let Some((head, body)) = read_request(&mut inbound).await else {
        return;
    };
    let form = String::from_utf8_lossy(&body).into_owned();
    let action = form_param(&form, "Action").unwrap_or_default();
    let outcome = {
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let over_rate = match st.rate {
            Some(limit) if action == "AssumeRole" => {
                while st
                    .passed
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    st.passed.pop_front();
                }
                st.passed.len() >= limit
            }
            _ => false,
        };
        st.credit += st.share;
        let outcome = if over_rate {
            Outcome::Faulted(Fault::Throttle)
        } else if st.credit >= 1.0 - 1e-9 {
            st.credit -= 1.0;
            Outcome::Faulted(st.fault)
        } else {
            if st.rate.is_some() && action == "AssumeRole" {
                st.passed.push_back(now);
            }
            Outcome::Passed
        };
        st.attempts.push(StsAttempt {
            at: now,
            action,
            role_arn: form_param(&form, "RoleArn"),
            params: form
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (form_decode(k), form_decode(v)))
                .collect(),
            outcome,
        });
        outcome
    };
    let reply = match outcome {
        Outcome::Faulted(Fault::Throttle) => {
            Some(xml_error("400 Bad Request", "Sender", "Throttling", "Rate exceeded").into_bytes())
        }
        Outcome::Faulted(Fault::Unavailable) => Some(
            xml_error(
                "503 Service Unavailable",
                "Receiver",
                "ServiceUnavailable",
                "Service is unavailable",
            )
            .into_bytes(),
        ),
        Outcome::Faulted(Fault::Deny) => {
            let resource = form_param(&form, "RoleArn").unwrap_or_default();
            Some(
                xml_error(
                    "403 Forbidden",
                    "Sender",
                    "AccessDenied",
                    &format!(
                        "User: {DENIED_CALLER_ARN} is not authorized to perform: sts:AssumeRole on resource: {resource}"
                    ),
                )
                .into_bytes(),
            )
        }
        Outcome::Faulted(Fault::Reset) => {
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = inbound.set_zero_linger();
            return;
        }
        Outcome::Faulted(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            forward(target, &head, &body).await
        }
        Outcome::Passed => forward(target, &head, &body).await,
    };
    match reply {
        Some(bytes) => {
            let _ = inbound.write_all(&bytes).await;
            let _ = inbound.shutdown().await;
        }
        None => {
            let _ = inbound.set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{form_decode, form_param};

    #[test]
    fn decodes_form_values() {
        let body = "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fr-1&X=a+b";
        assert_eq!(form_param(body, "Action").as_deref(), Some("AssumeRole"));
        assert_eq!(
            form_param(body, "RoleArn").as_deref(),
            Some("arn:aws:iam::123456789012:role/r-1")
        );
        assert_eq!(form_param(body, "X").as_deref(), Some("a b"));
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }
}
