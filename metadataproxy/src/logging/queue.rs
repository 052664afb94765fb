//! The log's way to stderr: formatted lines wait in two bounded queues, `audit` (target `audit`)
//! and `other`, which one writer thread drains, audit lines first. Handing a line over takes a
//! short lock and never waits for the sink: when a queue is full the line is dropped and counted
//! (`metadataproxy_log_lines_dropped_total{stream}`), and once the sink has caught up the writer
//! says how many were lost, on the stream that lost them. A slow or stalled sink (a pipe nobody
//! reads, a journald that throttles) thus never holds up a request, and a flood of other lines
//! can neither push audit lines out of their queue nor delay them.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// The target whose lines go to the audit queue.
pub const AUDIT_TARGET: &str = "audit";

/// How long the daemon waits, at exit, for queued lines to be written.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// The two queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Lines with target `audit`: one per credential set handed out.
    Audit,
    /// Everything else.
    Other,
}

impl Stream {
    /// The `stream` label of the dropped-lines metric.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Audit => 0,
            Self::Other => 1,
        }
    }
}

/// How much each queue holds at most (whichever bound is reached first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Lines.
    pub lines: usize,
    /// Bytes of those lines.
    pub bytes: usize,
}

impl Default for Bounds {
    /// 4096 lines or 1 MiB: seconds of the busiest logging, and a bounded amount of memory.
    fn default() -> Self {
        Self {
            lines: 4096,
            bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Queues {
    queues: [Queue; 2],
    closed: bool,
}

/// What the producers and the writer thread share.
#[derive(Debug)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    bounds: Bounds,
    /// Lines dropped per stream and not yet reported by a log line.
    unreported: [AtomicU64; 2],
    /// Called for each dropped line (the metric).
    on_drop: fn(Stream),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line`, or drops and counts it when its queue is full. Never waits for the sink.
    fn push(&self, stream: Stream, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        let mut all = self.lock();
        if all.closed {
            // Shutting down: nothing is served any more, so writing directly may wait.
            drop(all);
            let _ = std::io::stderr().write_all(&line);
            return;
        }
        let queue = &mut all.queues[stream.index()];
        if queue.lines.len() >= self.bounds.lines || queue.bytes + line.len() > self.bounds.bytes {
            drop(all);
            self.unreported[stream.index()].fetch_add(1, Ordering::Relaxed);
            (self.on_drop)(stream);
            return;
        }
        queue.bytes += line.len();
        queue.lines.push_back(line);
        drop(all);
        self.ready.notify_one();
    }

    /// The next line to write, audit first; `None` when the queues are empty and lines were
    /// dropped (time to say so); waits while there is nothing to do; `Err` once closed and empty.
    fn next(&self) -> Result<Option<(Stream, Vec<u8>)>, ()> {
        let mut all = self.lock();
        loop {
            for stream in [Stream::Audit, Stream::Other] {
                let queue = &mut all.queues[stream.index()];
                if let Some(line) = queue.lines.pop_front() {
                    queue.bytes -= line.len();
                    return Ok(Some((stream, line)));
                }
            }
            if self
                .unreported
                .iter()
                .any(|n| n.load(Ordering::Relaxed) > 0)
            {
                return Ok(None);
            }
            if all.closed {
                return Err(());
            }
            all = self.ready.wait(all).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Hands formatted lines to the queues (the `MakeWriter` of the daemon's subscriber).
#[derive(Debug, Clone)]
pub struct QueueWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it wrote what was queued (for at most 1 s).
#[derive(Debug)]
pub struct QueueGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// One line being formatted; queued when dropped.
#[derive(Debug)]
pub struct Line {
    shared: Arc<Shared>,
    stream: Stream,
    bytes: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.shared
            .push(self.stream, std::mem::take(&mut self.bytes));
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        self.line(Stream::Other)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        let stream = if meta.target() == AUDIT_TARGET {
            Stream::Audit
        } else {
            Stream::Other
        };
        self.line(stream)
    }
}

impl QueueWriter {
    /// Queues of `bounds` drained into `sink` by a new thread; `on_drop` is called for each line
    /// dropped because its queue was full.
    pub fn start(
        sink: impl Write + Send + 'static,
        bounds: Bounds,
        on_drop: fn(Stream),
    ) -> std::io::Result<(Self, QueueGuard)> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            bounds,
            unreported: [AtomicU64::new(0), AtomicU64::new(0)],
            on_drop,
        });
        let drained = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || drain(&drained, sink))?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            QueueGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn line(&self, stream: Stream) -> Line {
        Line {
            shared: Arc::clone(&self.shared),
            stream,
            bytes: Vec::new(),
        }
    }

    /// Lines waiting in `stream`'s queue.
    pub fn queued(&self, stream: Stream) -> usize {
        self.shared.lock().queues[stream.index()].lines.len()
    }
}

/// The writer thread: writes queued lines, audit first, and reports drops once caught up.
fn drain(shared: &Shared, mut sink: impl Write) {
    while let Ok(next) = shared.next() {
        match next {
            Some((stream, line)) => {
                if sink.write_all(&line).and_then(|()| sink.flush()).is_err() {
                    // The sink is gone (a closed pipe): the line is lost, and counted, but not
                    // reported through that same sink (which would fail again, and again).
                    (shared.on_drop)(stream);
                }
            }
            None => report(shared),
        }
    }
}

/// Says, through the log itself, how many lines each stream lost since the last report.
fn report(shared: &Shared) {
    let audit = shared.unreported[Stream::Audit.index()].swap(0, Ordering::Relaxed);
    let other = shared.unreported[Stream::Other.index()].swap(0, Ordering::Relaxed);
    if audit > 0 {
        tracing::warn!(target: "audit", dropped = audit, "audit log lines were dropped: the log sink was too slow (metadataproxy_log_lines_dropped_total)");
    }
    if other > 0 {
        tracing::warn!(
            dropped = other,
            "log lines were dropped: the log sink was too slow (metadataproxy_log_lines_dropped_total)"
        );
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + FLUSH_AT_EXIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
