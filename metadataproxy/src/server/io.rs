//! A connection's socket as the server uses it: read and written for hyper, watched for a
//! request head that does not arrive in time, and answering a refused connection before closing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::deadline::Watch;

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

/// The caller's socket as hyper's I/O. It tells the listener's [`Deadlines`](super::deadline::Deadlines) when the
/// connection starts waiting for a request head (at accept, and after each response) and
/// whether request bytes arrived since (a slow request, answered 408, rather than an idle
/// keep-alive, just closed).
#[derive(Debug)]
pub struct Tracked(pub(super) Arc<Watch>);

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let watch = &*self.0;
            ready!(watch.stream.poll_read_ready(cx))?;
            let room = buf.remaining();
            let mut got = 0;
            // As tokio's own `TcpStream::poll_read`: a read shorter than the room left means the
            // socket is drained, so its readiness is cleared now (`try_io` clears it as of before
            // the read: an arrival meanwhile is not lost) instead of by one more `recv` returning
            // `EWOULDBLOCK` — a system call and a round of hyper's loop saved per request.
            let read = watch.stream.try_io(Interest::READABLE, || {
                // Reads into the uninitialised part directly (no zeroing), and advances `buf`.
                got = watch.stream.try_read_buf(buf)?;
                if got > 0 && got < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => {}
                Ok(()) | Err(_) if got > 0 => {
                    watch.partial.store(true, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Ok(()) => return Poll::Ready(Ok(())),
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
        let watch = &*self.0;
        loop {
            ready!(watch.stream.poll_write_ready(cx))?;
            match watch.stream.try_write(buf) {
                Ok(n) => {
                    // A response went out: the next request's head is awaited from now.
                    watch.partial.store(false, Ordering::Relaxed);
                    watch.wait_for_head();
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
