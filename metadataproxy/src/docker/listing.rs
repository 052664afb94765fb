//! The running containers' ids from `GET /containers/json`, parsed as the body streams in and
//! keeping only each summary's `Id` (and `State`, to leave out the restarting): the resync and
//! the liveness check every `DOCKER_PING_INTERVAL` cost the ids, not every summary in full
//! (bollard's `list_containers` held the whole body and decoded every field of every container,
//! megabytes at 10,000 containers, which the allocator then kept).

use std::fmt;
use std::io;
use std::time::Duration;

use bollard::ClientVersion;
use futures_util::TryStreamExt as _;
use http_body_util::{BodyStream, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::task::AbortOnDropHandle;

use crate::config::Endpoint;

/// How much of an error answer's body is kept for the message.
const ERROR_BODY_LIMIT: usize = 512;

/// Why the listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The connection or the HTTP exchange failed.
    #[error("{}", with_cause(.0))]
    Http(#[from] hyper::Error),
    /// The socket could not be opened.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// dockerd answered with an error status.
    #[error("dockerd answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The start of its body.
        message: String,
    },
    /// The body is not a JSON array of container summaries with string `Id`s.
    #[error("not a container listing: {0}")]
    Json(#[from] serde_json::Error),
    /// The thread parsing the body failed (a panic).
    #[error("the listing's parser failed: {0}")]
    Parser(tokio::task::JoinError),
    /// No complete answer in time.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
}

/// hyper's error with its cause ("error reading a body from connection: connection reset").
fn with_cause(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The ids of the running containers (restarting ones left out: Docker lists them as running,
/// but they have no process), asked of dockerd at `endpoint` in API `version`.
pub async fn running_ids(
    endpoint: &Endpoint,
    version: ClientVersion,
    timeout: Duration,
) -> Result<Vec<String>, ListError> {
    let path = format!(
        "/v{}.{}/containers/json",
        version.major_version, version.minor_version
    );
    let call = async {
        match endpoint {
            Endpoint::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(ListError::Connect)?;
                get_ids(stream, &path).await
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(ListError::Connect)?;
                get_ids(stream, &path).await
            }
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ListError::Timeout(timeout))?
}

/// `GET path` on its own connection over `stream`; the body goes, as it arrives, to a parser on
/// a blocking thread.
async fn get_ids<S>(stream: S, path: &str) -> Result<Vec<String>, ListError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends with the exchange (the request asks to close), or is aborted when the listing ends or
    // is dropped (its timeout): the body then fails, so the parser's thread never waits on a
    // stalled dockerd.
    let _driver = AbortOnDropHandle::new(tokio::spawn(connection));
    let request = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ListError::Connect(io::Error::other(e)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body();
    if status != StatusCode::OK {
        // Only the start is kept, so only the start is read: an error answer of any size costs
        // at most this much.
        let mut bytes = Vec::new();
        let mut frames = BodyStream::new(body);
        while bytes.len() < ERROR_BODY_LIMIT
            && let Some(frame) = frames.try_next().await?
        {
            if let Ok(data) = frame.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(ERROR_BODY_LIMIT)]);
        return Err(ListError::Status {
            status,
            message: text.trim().to_owned(),
        });
    }
    let chunks = BodyStream::new(body)
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())))
        .map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(chunks));
    tokio::task::spawn_blocking(move || parse(io::BufReader::new(reader)))
        .await
        .map_err(ListError::Parser)?
}

/// The running ids in a listing read from `reader`.
fn parse(reader: impl io::Read) -> Result<Vec<String>, ListError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let ids = de.deserialize_seq(RunningIds)?;
    de.end()?;
    Ok(ids)
}

/// One summary as the listing needs it; every other field is skipped unread.
#[derive(Deserialize)]
struct Summary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State", default)]
    state: Option<String>,
}

/// Gathers the ids of the summaries of a JSON array one at a time.
struct RunningIds;

impl<'de> Visitor<'de> for RunningIds {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of container summaries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(summary) = seq.next_element::<Summary>()? {
            if summary.state.as_deref() != Some("restarting") {
                ids.push(summary.id);
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_ids_and_leaves_out_the_restarting() {
        let body = br#"[
            {"Id":"a1","Names":["/web"],"State":"running","Labels":{"k":"v"},
             "NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.2"}}}},
            {"Id":"b2","State":"restarting"},
            {"Id":"c3","State":"paused","Mounts":[]},
            {"Id":"d4"}
        ]"#;
        assert_eq!(parse(&body[..]).unwrap(), ["a1", "c3", "d4"]);
        assert!(parse(&b"[]"[..]).unwrap().is_empty());
    }

    #[test]
    fn anything_but_a_listing_is_a_precise_error() {
        for (body, says) in [
            (
                &br#"{"message":"page not found"}"#[..],
                "an array of container summaries",
            ),
            (br#"[{"Names":["/x"]}]"#, "missing field `Id`"),
            (br#"[{"Id":7}]"#, "invalid type: integer `7`"),
            (br#"[{"Id":"a"}"#, "EOF while parsing"),
            (br#"[{"Id":"a"}] ["#, "trailing characters"),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(body));
        }
    }

    /// A dockerd stand-in on a unix socket that answers one connection with `answer`, written in
    /// pieces of `piece` bytes, and keeps it open until the client closes it; returns the
    /// socket's endpoint and what was asked.
    fn serve_once(
        dir: &std::path::Path,
        answer: Vec<u8>,
        piece: usize,
    ) -> (Endpoint, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let asked = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0; 4096];
            let n = s.read(&mut head).await.unwrap();
            for chunk in answer.chunks(piece) {
                s.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Open until the client closes: an answer cut short stalls rather than ends.
            let _ = s.read(&mut [0; 1]).await;
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        (Endpoint::Unix(path), asked)
    }

    const V: ClientVersion = ClientVersion {
        major_version: 1,
        minor_version: 44,
    };

    #[tokio::test]
    async fn a_listing_streamed_in_small_pieces_gives_every_running_id() {
        let dir = tempfile::tempdir().unwrap();
        let summaries: Vec<String> = (0..2000)
            .map(|i| {
                format!(
                    r#"{{"Id":"{i:064x}","State":"running","Labels":{{"a":"{}"}}}}"#,
                    "x".repeat(100)
                )
            })
            .collect();
        let body = format!("[{}]", summaries.join(","));
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (endpoint, asked) = serve_once(dir.path(), answer.into_bytes(), 1000);
        let ids = running_ids(&endpoint, V, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(ids.len(), 2000);
        assert_eq!(ids[1999], format!("{:064x}", 1999));
        let asked = asked.await.unwrap();
        assert!(
            asked.starts_with("GET /v1.44/containers/json HTTP/1.1\r\n"),
            "{asked}"
        );
    }

    #[tokio::test]
    async fn an_error_answer_a_dead_socket_and_silence_are_precise_errors() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"{"message":"containerd is not running"}"#;
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (endpoint, _) = serve_once(dir.path(), answer.into_bytes(), 64);
        let e = running_ids(&endpoint, V, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"dockerd answered 500 Internal Server Error: {"message":"containerd is not running"}"#
        );

        // Only the start of an error answer is read: a huge (here, never finished) one is not
        // waited for.
        let huge = dir.path().join("huge");
        std::fs::create_dir(&huge).unwrap();
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 10000000\r\n\r\n{}",
            "x".repeat(1000)
        );
        let (endpoint, _server) = serve_once(&huge, answer.into_bytes(), 100);
        let e = running_ids(&endpoint, V, Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("dockerd answered 404 Not Found: xxx"), "{e}");
        assert!(e.len() < ERROR_BODY_LIMIT + 100, "{} bytes", e.len());

        let gone = Endpoint::Unix(dir.path().join("no.sock"));
        let e = running_ids(&gone, V, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot connect: "), "{e}");

        let stalled = dir.path().join("stalled");
        std::fs::create_dir(&stalled).unwrap();
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n[{\"Id\":\"a\"},";
        let (endpoint, server) = serve_once(&stalled, head.as_bytes().to_vec(), 64);
        let e = running_ids(&endpoint, V, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no complete answer within 300ms");
        // The connection is closed at the timeout, not left to a parser waiting for the rest.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the listing's connection closed at its timeout")
            .unwrap();

        let mute = dir.path().join("mute.sock");
        let _listener = tokio::net::UnixListener::bind(&mute).unwrap();
        let e = running_ids(&Endpoint::Unix(mute), V, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no complete answer within 200ms");
    }
}
