//! The `metadataproxy` binary: configuration, logging, runtime, signals, and the `doctor`
//! subcommand. Everything else is in the library.

use std::io::Write as _;
use std::process::ExitCode;

use metadataproxy::config::{Config, ConfigErrors, LogFormat, Mode, ProcessEnv};

fn main() -> ExitCode {
    match Config::mode(std::env::args_os()) {
        Ok(Mode::Serve) => serve(),
        Ok(Mode::Doctor) => doctor(),
        Err(e) => e.exit(),
    }
}

/// `metadataproxy doctor`: every check on stdout; exit status 1 when one failed.
fn doctor() -> ExitCode {
    let config = Config::load(std::env::args_os(), &ProcessEnv);
    // Only problems the checks do not report themselves reach stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metadataproxy doctor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(metadataproxy::doctor::run(config));
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{report}");
    let _ = out.flush();
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the daemon.
fn serve() -> ExitCode {
    let config = match Config::load(std::env::args_os(), &ProcessEnv) {
        Ok(c) => c,
        Err(ConfigErrors::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("metadataproxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Declared before the runtime, so it is dropped after it: every log line is flushed.
    let _log_writer = init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(metadataproxy::app::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "metadataproxy failed");
            ExitCode::FAILURE
        }
    }
}

/// Lines the log writer thread may have queued. The queue is allocated and touched in full up
/// front (tracing-appender's default of 128,000 lines is 4 MiB of resident memory, idle or not);
/// a burst beyond this makes the logging thread wait, it never loses a line.
const LOG_QUEUE_LINES: usize = 4096;

/// Logs go to stderr through a writer thread, so a request never waits on a `write(2)`; the
/// writer blocks rather than drops when its buffer is full (audit lines are never lost).
fn init_tracing(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
