//! Logging: the daemon's subscriber (plain or JSON lines on stderr, through bounded queues that
//! never hold up a request: [`queue`]), and the rate limit on refusal lines ([`refusals`]), which
//! every refusal goes through with the [`refused!`](crate::refused) macro:
//!
//! ```ignore
//! crate::refused!(INFO, &identity, peer = %conn.peer, path = %p, "refused path");
//! ```
//!
//! logs `refused path caller=… suppressed=N peer=… path=…` within the caller's budget (with
//! `suppressed` only when lines of that caller were suppressed since its last one), and nothing
//! beyond it. A refusal is anything a caller can provoke at will (a refused path, token, body,
//! role, connection, or a failure it can repeat), so a caller can neither flood the log nor push
//! other lines, audit lines above all, past journald's rate limit.

pub mod queue;
pub mod refusals;

use std::sync::LazyLock;
use std::time::Instant;

use crate::caller::Identity;
use crate::config::{Config, LogFormat};
pub use queue::{Bounds, QueueGuard, QueueWriter, Stream};
pub use refusals::{RefusalLimiter, Verdict};

/// The daemon's refusal-line limiter.
static REFUSALS: LazyLock<RefusalLimiter> = LazyLock::new(RefusalLimiter::default);

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

/// Whether a refusal line about `caller` is logged now (see [`refusals`]); counts it when not,
/// and logs the summary of quiet callers' suppressed lines when a window ends with some.
pub fn admit(caller: &Identity) -> Verdict {
    let (verdict, unreported) = REFUSALS.ask(caller, Instant::now());
    if let Some(quiet) = unreported {
        tracing::info!(
            callers = quiet.callers,
            suppressed = quiet.lines,
            "refusal lines of callers that have gone quiet were suppressed by the rate limit"
        );
    }
    if verdict == Verdict::Suppress {
        crate::metrics::log_line_suppressed();
    }
    verdict
}

/// Logs a refusal line about a caller, within its budget (see the [module](crate::logging)):
/// `refused!(LEVEL, &identity, fields…, "message")`, `LEVEL` one of tracing's levels
/// (`INFO`, `WARN`…). The line gets `caller` and, when lines of that caller were suppressed
/// since its last one, `suppressed`.
#[macro_export]
macro_rules! refused {
    ($level:ident, $caller:expr, $($rest:tt)+) => {{
        let caller: &$crate::caller::Identity = $caller;
        if ::tracing::enabled!(::tracing::Level::$level) {
            if let $crate::logging::Verdict::Log { suppressed } = $crate::logging::admit(caller) {
                let suppressed = (suppressed > 0).then_some(suppressed);
                ::tracing::event!(::tracing::Level::$level, caller = %caller, suppressed, $($rest)+);
            }
        }
    }};
}
