//! The server against real sockets: how shutdown drains a listener's connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

/// Answers `/slow` after 300 ms and anything else at once.
struct Slow;

impl Site for Slow {
    type Conn = ();
    type Permit = ();

    fn bounds(&self) -> HttpBounds {
        HttpBounds {
            header_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
        }
    }

    fn admit(&self, _: SocketAddr, _: SocketAddr) -> Result<((), ()), Refusal> {
        Ok(((), ()))
    }

    async fn handle(&self, req: Request<Incoming>, (): &()) -> Response<Body> {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Response::new(Body::new(bytes::Bytes::from_static(b"done")))
    }
}

async fn send(stream: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
}

/// Everything the server sends until it closes the connection (panics after 5 s).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .expect("the server never closed the connection")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_a_busy_one_finish_its_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(Slow), async {
        let _ = stopped.await;
    }));

    // An idle keep-alive connection, answered once.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    send(&mut idle, "/fast").await;
    let mut first = [0_u8; 256];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].ends_with(b"done"), "{:?}", &first[..n]);
    // A connection whose request is being answered when shutdown begins.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    send(&mut busy, "/slow").await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let began = Instant::now();
    stop.send(()).unwrap();
    assert_eq!(
        read_to_close(&mut idle).await,
        "",
        "the idle one is closed, unanswered"
    );
    let answer = read_to_close(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.ends_with("done"),
        "the busy one got its whole answer: {answer}"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not return once every connection ended")
        .unwrap();
    assert!(
        began.elapsed() < SHUTDOWN_GRACE,
        "it waited for the connections to end, not for the grace period"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
