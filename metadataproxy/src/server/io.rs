//! A connection's socket as the server uses it: answering 408 to a request head that does not
//! arrive in time, and answering a refused connection before closing it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Sent when a request head was begun but not finished within the header timeout.
const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 16\r\n\r\nRequest Timeout\n";
/// How long a refused connection's request is drained, so closing it does not reset the answer.
const DRAIN: Duration = Duration::from_millis(500);

/// Answers a refused connection with `answer`, drains what it sent for a moment (closing with
/// unread bytes would reset the connection and lose the answer), and closes it.
pub async fn refuse_draining(mut stream: TcpStream, answer: &'static [u8]) {
    if tokio::io::AsyncWriteExt::write_all(&mut stream, answer)
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let mut sink = [0_u8; 1024];
    let _ = tokio::time::timeout(DRAIN, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The caller's socket as hyper's I/O, shared with the connection task so that it can still
/// answer 408 after hyper gave up on a slow request head. Remembers whether request bytes
/// arrived since the last response, which tells a slow request from an idle keep-alive.
#[derive(Debug)]
pub struct Tracked {
    stream: Arc<TcpStream>,
    partial: Arc<AtomicBool>,
}

/// The connection task's side of [`Tracked`].
#[derive(Debug)]
pub struct TrackedHandle {
    stream: Arc<TcpStream>,
    partial: Arc<AtomicBool>,
}

impl Tracked {
    /// Wraps `stream`; the handle can answer 408 later.
    pub fn new(stream: TcpStream) -> (Self, TrackedHandle) {
        let stream = Arc::new(stream);
        let partial = Arc::new(AtomicBool::new(false));
        (
            Self {
                stream: Arc::clone(&stream),
                partial: Arc::clone(&partial),
            },
            TrackedHandle { stream, partial },
        )
    }
}

impl TrackedHandle {
    /// After a header timeout: answers 408 if a request was begun (an idle keep-alive connection
    /// is just closed, as HTTP expects). Best effort, never waits.
    pub fn request_timed_out(&self) {
        if self.partial.load(Ordering::Relaxed) {
            let _ = self.stream.try_write(TIMED_OUT);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            // Reads into the uninitialised part directly (no zeroing), and advances `buf`.
            match self.stream.try_read_buf(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.partial.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    self.partial.store(false, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes (FIN) when the connection task drops its last handle, right after.
        Poll::Ready(Ok(()))
    }
}
