//! The queues with a sink that can be stalled: handing a line over never waits, a full queue
//! drops and counts, audit lines keep their own room and go first.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter as _;

use super::{Bounds, QueueWriter, Stream};

/// A sink that writes into memory, and blocks every write while it is closed.
#[derive(Debug, Clone, Default)]
struct Gate {
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Gate {
    fn closed() -> Self {
        Self::default()
    }

    fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.written.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut open = self.open.0.lock().unwrap();
        while !*open {
            open = self.open.1.wait(open).unwrap();
        }
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write(writer: &QueueWriter, stream: Stream, text: &str) {
    let mut line = match stream {
        Stream::Audit => writer.line(Stream::Audit),
        Stream::Other => writer.make_writer(),
    };
    line.write_all(text.as_bytes()).unwrap();
}

/// Runs `f` on another thread; panics if it does not finish within 5 s (it blocked).
fn within_5s(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(5))
        .expect("handing lines over blocked on a stalled sink");
}

static STALLED_DROPS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn count_stalled(stream: Stream) {
    STALLED_DROPS[stream.index()].fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_stalled_sink_never_blocks_and_audit_lines_keep_their_room() {
    let gate = Gate::closed();
    let bounds = Bounds {
        lines: 8,
        bytes: 1 << 20,
    };
    let (writer, guard) = QueueWriter::start(gate.clone(), bounds, count_stalled).unwrap();
    let producer = writer.clone();
    within_5s(move || {
        // The first line may be taken by the writer thread (then stuck in the sink).
        for i in 0..100 {
            write(&producer, Stream::Other, &format!("refused {i}\n"));
        }
        for i in 0..5 {
            write(&producer, Stream::Audit, &format!("audit {i}\n"));
        }
    });
    let dropped = STALLED_DROPS[Stream::Other.index()].load(Ordering::SeqCst);
    assert!(
        (91..=92).contains(&dropped),
        "100 lines into a queue of 8 (one maybe in the sink): {dropped} dropped"
    );
    assert_eq!(
        STALLED_DROPS[Stream::Audit.index()].load(Ordering::SeqCst),
        0,
        "audit lines were dropped because other lines filled their queue"
    );
    // One of them may be in the stalled sink already (audit lines are taken first).
    assert!(writer.queued(Stream::Audit) >= 4);
    gate.open();
    drop(guard);
    let lines = gate.lines();
    let audit: Vec<&String> = lines.iter().filter(|l| l.starts_with("audit")).collect();
    assert_eq!(audit.len(), 5, "{lines:?}");
    // Audit lines are written before the other lines still queued.
    let first_audit = lines.iter().position(|l| l.starts_with("audit")).unwrap();
    assert!(
        first_audit <= 1,
        "audit lines waited behind others: {lines:?}"
    );
}

static BYTE_DROPS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn count_bytes(stream: Stream) {
    BYTE_DROPS[stream.index()].fetch_add(1, Ordering::SeqCst);
}

#[test]
fn the_byte_bound_holds_too() {
    let gate = Gate::closed();
    let bounds = Bounds {
        lines: 1000,
        bytes: 1000,
    };
    let (writer, guard) = QueueWriter::start(gate.clone(), bounds, count_bytes).unwrap();
    let line = "x".repeat(99) + "\n";
    for _ in 0..30 {
        write(&writer, Stream::Other, &line);
    }
    assert!(writer.queued(Stream::Other) <= 10);
    assert!(BYTE_DROPS[Stream::Other.index()].load(Ordering::SeqCst) >= 19);
    gate.open();
    drop(guard);
}

fn ignore(_: Stream) {}

#[test]
fn lines_are_written_whole_and_in_order() {
    let gate = Gate::closed();
    gate.open();
    let (writer, guard) = QueueWriter::start(gate.clone(), Bounds::default(), ignore).unwrap();
    for i in 0..500 {
        write(&writer, Stream::Other, &format!("line {i}\n"));
    }
    drop(guard);
    let lines = gate.lines();
    let want: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want);
}
