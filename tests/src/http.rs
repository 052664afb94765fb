//! A byte-exact HTTP/1.1 client whose socket is bound to a chosen loopback source address, so the
//! daemon sees a different caller per address and odd paths reach it exactly as written.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// How long one request may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A parsed response: status, headers in order, body as (lossy) UTF-8.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the response when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// Sends `request` exactly as given from `src` (port chosen by the kernel) to `dst`; reads one
/// response. Panics with context on connection errors, timeouts and malformed responses.
pub async fn raw_http(src: Ipv4Addr, dst: SocketAddr, request: &[u8]) -> Response {
    let first_line = String::from_utf8_lossy(request)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    match tokio::time::timeout(TIMEOUT, exchange(src, dst, request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => panic!("{first_line:?} from {src} to {dst}: {e}"),
        Err(elapsed) => panic!("{first_line:?} from {src} to {dst}: no response ({elapsed})"),
    }
}

async fn exchange(src: Ipv4Addr, dst: SocketAddr, request: &[u8]) -> Result<Response, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let mut stream = socket
        .connect(dst)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    send_and_read(&mut stream, request, false).await
}

/// Writes `request` on `stream` and reads one response. `keep_open`: the daemon must keep the
/// connection (its closing is an error); otherwise the body may run to the end of the stream.
async fn send_and_read(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
    keep_open: bool,
) -> Result<Response, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0_u8; 8192];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 && keep_open {
            return Err(format!(
                "the daemon closed the keep-alive connection: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        if let Some(response) = parse(&buf, n == 0)? {
            return Ok(response);
        }
        if n == 0 {
            return Err(format!(
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    }
}

/// `Ok(None)` while more bytes are needed; at `eof` whatever follows the head is the body.
fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let rest = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        match rest.get(..len) {
            Some(body) => body.to_vec(),
            None if eof => return Err(format!("body shorter than content-length {len}")),
            None => return Ok(None),
        }
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        match dechunk(rest) {
            Some(body) => body,
            None if eof => return Err("incomplete chunked body".to_owned()),
            None => return Ok(None),
        }
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// The decoded chunked body, or `None` if it is not complete yet.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// `method path` with the given extra headers, `Host: 169.254.169.254` and `Connection: close`.
pub async fn request(
    method: &str,
    src: Ipv4Addr,
    dst: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
    for (name, value) in headers {
        let _ = write!(req, "{name}: {value}\r\n");
    }
    if method == "PUT" || method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_http(src, dst, req.as_bytes()).await
}

/// `GET path` from `src`.
pub async fn get(src: Ipv4Addr, dst: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", src, dst, path, headers).await
}

/// `PUT /latest/api/token` from `src`; `ttl` is the TTL header's value, `None` leaves it out.
pub async fn put_token(src: Ipv4Addr, dst: SocketAddr, ttl: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = ttl
        .map(|t| ("X-aws-ec2-metadata-token-ttl-seconds", t))
        .into_iter()
        .collect();
    request("PUT", src, dst, "/latest/api/token", &headers).await
}

/// A fresh IMDSv2 token for `src` (TTL 21600, as aws-sdk-rust asks); panics unless 200.
pub async fn token(src: Ipv4Addr, dst: SocketAddr) -> String {
    let response = put_token(src, dst, Some("21600")).await;
    assert_eq!(
        response.status, 200,
        "token PUT from {src} failed: {response:?}"
    );
    assert!(
        !response.body.is_empty(),
        "empty token from {src}: {response:?}"
    );
    response.body
}

#[cfg(test)]
mod tests {
    use super::{dechunk, parse};

    #[test]
    fn parses_content_length_and_waits_for_the_whole_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhel";
        assert!(parse(raw, false).unwrap().is_none());
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let r = parse(raw, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_str(), r.header("x-a")),
            (200, "hello", Some("b"))
        );
    }

    #[test]
    fn parses_chunked_and_read_to_eof_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"3\r\nab").is_none());
        let r = parse(b"HTTP/1.0 404 Not Found\r\n\r\ngone", true)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "gone"));
    }
}

/// One keep-alive connection from a chosen source address: requests go one after the other over
/// the same socket (as the AWS SDKs' IMDS clients do).
#[derive(Debug)]
pub struct KeepAlive {
    stream: tokio::net::TcpStream,
    src: Ipv4Addr,
}

impl KeepAlive {
    /// Connects from `src` to `dst`; panics with context on failure.
    pub async fn connect(src: Ipv4Addr, dst: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((src, 0)))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(dst))
            .await
            .unwrap_or_else(|_| panic!("connect from {src} to {dst}: timed out"))
            .unwrap_or_else(|e| panic!("connect from {src} to {dst}: {e}"));
        Self { stream, src }
    }

    /// `GET path` on this connection, which stays open; panics unless a whole response comes
    /// back and the daemon keeps the connection.
    pub async fn get(&mut self, path: &str) -> Response {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n");
        let exchange = send_and_read(&mut self.stream, req.as_bytes(), true);
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => panic!("GET {path} from {} (keep-alive): {e}", self.src),
            Err(elapsed) => panic!(
                "GET {path} from {} (keep-alive): no response ({elapsed})",
                self.src
            ),
        }
    }
}
