//! A stand-in for the real IMDS behind proxy mode: records every request exactly as received and
//! serves recognisable *host* answers, including host-role credentials, so any leak is visible.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The host's instance-profile role name the stand-in advertises.
pub const HOST_ROLE: &str = "host-role";
/// The access key id of the host credentials: seeing it anywhere in a caller's answer is a leak.
pub const HOST_ACCESS_KEY_ID: &str = "ASIAHOSTROLELEAKED00";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target exactly as sent (path and query, no decoding or normalising).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The recording upstream; runs on its own thread and runtime, stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Its thread: joined on drop, so the address is free again once the `Upstream` is gone.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Listens on 127.0.0.1 on a kernel-chosen port.
    pub fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Listens on `addr` (e.g. `169.254.169.254:80`, made local, as the host's real IMDS).
    pub fn start_on(addr: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind the upstream stand-in on {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking upstream");
        let addr = listener.local_addr().expect("upstream address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, stop) = oneshot::channel();
        let recorded = Arc::clone(&requests);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            runtime.block_on(serve(listener, recorded, stop));
        });
        Self {
            addr,
            requests,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for `METADATA_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("upstream record lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    recorded: Arc<Mutex<Vec<RecordedRequest>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio upstream listener");
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(handle(stream, Arc::clone(&recorded)));
                }
            }
        }
    }
}

/// Reads one request, records it, answers it and closes the connection.
async fn handle(mut stream: TcpStream, recorded: Arc<Mutex<Vec<RecordedRequest>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0_u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let request = RecordedRequest {
        method: request_line.next().unwrap_or_default().to_owned(),
        target: request_line.next().unwrap_or_default().to_owned(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    };
    let (status, extra, body) = answer(&request);
    recorded.lock().expect("upstream record lock").push(request);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What the host's IMDS would say: a token, the host role and its credentials, or a marker body.
fn answer(request: &RecordedRequest) -> (&'static str, String, String) {
    let path = request.target.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("PUT", "/latest/api/token") => {
            let ttl = request
                .header("X-aws-ec2-metadata-token-ttl-seconds")
                .unwrap_or("21600");
            (
                "200 OK",
                format!("X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                "HOST-UPSTREAM-TOKEN".to_owned(),
            )
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => {
            ("200 OK", String::new(), HOST_ROLE.to_owned())
        }
        ("GET", p) if p == format!("/latest/meta-data/iam/security-credentials/{HOST_ROLE}") => (
            "200 OK",
            String::new(),
            serde_json::json!({
                "Code": "Success",
                "LastUpdated": "2026-01-01T00:00:00Z",
                "Type": "AWS-HMAC",
                "AccessKeyId": HOST_ACCESS_KEY_ID,
                "SecretAccessKey": "HOST-SECRET-LEAKED",
                "Token": "HOST-TOKEN-LEAKED",
                "Expiration": "2099-01-01T00:00:00Z",
            })
            .to_string(),
        ),
        _ => (
            "200 OK",
            String::new(),
            format!("HOST-UPSTREAM {}", request.target),
        ),
    }
}
