//! The `metadataproxy` binary: configuration, logging, runtime, signals, and the `doctor`
//! subcommand. Everything else is in the library.

use std::io::Write as _;
use std::process::ExitCode;

use metadataproxy::config::{Config, ConfigErrors, Mode, ProcessEnv};

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
    let _log_writer = match metadataproxy::logging::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("metadataproxy: cannot start the log writer thread: {e}");
            return ExitCode::FAILURE;
        }
    };
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
