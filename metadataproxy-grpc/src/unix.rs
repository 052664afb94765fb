//! A gRPC channel to a server listening on a unix socket (containerd's `containerd.sock`).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The authority of every call's URI. A unix socket has no host: this one is never resolved (the
/// connector ignores it), it only has to be a valid `http` URI.
const PLACEHOLDER_URI: &str = "http://localhost";

/// A channel to the gRPC server listening on the unix socket at `path`, connected (the first
/// connection is made here, so a missing socket or a refusal is this call's error); dropped
/// connections are made again, to the same path, by the channel itself.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.as_ref().to_owned();
    Endpoint::from_static(PLACEHOLDER_URI)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    use super::*;

    /// What an HTTP/2 client sends first (RFC 9113, 3.4).
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn the_channel_speaks_http2_to_the_socket_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut preface = [0; PREFACE.len()];
            stream.read_exact(&mut preface).await.unwrap();
            preface
        });
        let channel = tokio::time::timeout(Duration::from_secs(10), connect(&path))
            .await
            .expect("connect hung")
            .expect("connect failed");
        assert_eq!(&server.await.unwrap(), PREFACE);
        drop(channel);
    }

    #[tokio::test]
    async fn a_missing_socket_is_this_calls_error_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(dir.path().join("absent.sock"))
            .await
            .expect_err("nothing listens there");
        let mut causes = vec![err.to_string()];
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        assert!(
            causes
                .iter()
                .any(|c| c.contains("No such file or directory")),
            "{causes:?}"
        );
    }
}
