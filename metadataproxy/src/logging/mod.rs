//! Logging: the daemon's subscriber (plain or JSON lines on stderr, through bounded queues that
//! never hold up a request: [`queue`]).

pub mod queue;

use crate::config::{Config, LogFormat};
pub use queue::{Bounds, QueueGuard, QueueWriter, Stream};

/// Installs the daemon's subscriber: `LOG_LEVEL`'s filter, `LOG_FORMAT`, ANSI colours on a
/// terminal, lines to stderr through [`queue`]. Keep the guard until exit: dropping it writes
/// what is still queued (for at most a second).
pub fn init(config: &Config) -> std::io::Result<QueueGuard> {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = QueueWriter::start(std::io::stderr(), Bounds::default(), |stream| {
        crate::metrics::log_line_dropped(stream.label());
    })?;
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
}
