//! A minimal async HTTP/1.1 client: one request at a time on a connection bound to a source IP.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::{TcpSocket, TcpStream};

/// Longest a single request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one server.
#[derive(Debug)]
pub struct Conn {
    stream: BufStream<TcpStream>,
    host: String,
    closed: bool,
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    /// Connects to `addr` from `source` (any port); `None` lets the kernel pick the address.
    pub async fn open(source: Option<Ipv4Addr>, addr: SocketAddr) -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::from((ip, 0)))
                .with_context(|| format!("binding {ip}"))?;
        }
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, socket.connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufStream::new(stream),
            host: addr.to_string(),
            closed: false,
        })
    }

    /// Closes with a reset (`SO_LINGER` 0) when dropped: no `TIME_WAIT` is left on this side.
    pub fn reset_on_close(&self) -> Result<()> {
        Ok(self.stream.get_ref().set_zero_linger()?)
    }

    /// Whether the server said it closes the connection after the last response.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and reads its whole response (bounded by [`REQUEST_TIMEOUT`]).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, headers, body))
            .await
            .with_context(|| format!("{method} {path}: no response within {REQUEST_TIMEOUT:?}"))?
    }

    /// `PUT /latest/api/token` for a 6-hour IMDSv2 token, as the SDKs ask for one.
    pub async fn put_token(&mut self) -> Result<Response> {
        self.send(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            b"",
        )
        .await
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !body.is_empty() || method != "GET" {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("connection closed before a response");
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed inside the response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("bad header line {header:?}");
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>()?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => self.closed = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let body = match (length, chunked) {
            (_, true) => self.read_chunked().await?,
            (Some(n), false) => {
                let mut body = vec![0; n];
                self.stream.read_exact(&mut body).await?;
                body
            }
            (None, false) => {
                self.closed = true;
                let mut body = Vec::new();
                self.stream.read_to_end(&mut body).await?;
                body
            }
        };
        Ok(Response { status, body })
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).with_context(|| format!("chunk {line:?}"))?;
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..]).await?;
            line.clear();
            self.stream.read_line(&mut line).await?;
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// One request on a new connection from `source`, closed afterwards.
pub async fn once(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut conn = Conn::open(source, addr).await?;
    conn.send(method, path, headers, body).await
}
