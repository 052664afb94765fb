//! The STS client as the daemon uses it: every call counted and timed, and its outcome kept so
//! readiness can say whether STS answers without calling it again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{CacheKey, Credentials, Sts, StsError, StsErrorKind};

/// How one call to AWS ended.
#[derive(Debug, Clone)]
pub struct StsOutcome {
    /// When it ended.
    pub at: Instant,
    /// `sts:AssumeRole`, `iam:GetRole` or `sts:GetCallerIdentity`.
    pub operation: &'static str,
    /// `None`: it succeeded.
    pub error: Option<StsError>,
}

impl StsOutcome {
    /// Whether AWS answered at all: a refusal (denied, throttled) is an answer; no connection,
    /// a timeout, a 5xx or no credentials of our own is not.
    pub fn reachable(&self) -> bool {
        self.error
            .as_ref()
            .is_none_or(|e| matches!(e.kind, StsErrorKind::Denied | StsErrorKind::Throttled))
    }
}

/// The last outcome of a call to AWS, shared by the metered client and the readiness check.
#[derive(Debug, Default)]
pub struct StsHealth {
    last: Mutex<Option<StsOutcome>>,
}

impl StsHealth {
    /// Records how a call ended and counts it in the metrics.
    pub fn record(&self, operation: &'static str, error: Option<&StsError>, took: Duration) {
        crate::metrics::global().sts_call(operation, error.map(|e| e.kind.label()), took);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(StsOutcome {
            at: Instant::now(),
            operation,
            error: error.cloned(),
        });
    }

    /// The last outcome, if any call was made.
    pub fn last(&self) -> Option<StsOutcome> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An [`Sts`] that records every call in [`StsHealth`] and the metrics.
#[derive(Debug)]
pub struct MeteredSts {
    inner: Arc<dyn Sts>,
    health: Arc<StsHealth>,
}

impl MeteredSts {
    /// Wraps `inner`, recording into `health`.
    pub fn new(inner: Arc<dyn Sts>, health: Arc<StsHealth>) -> Self {
        Self { inner, health }
    }
}

impl Sts for MeteredSts {
    fn assume_role<'a>(
        &'a self,
        key: &'a CacheKey,
        duration: Duration,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.assume_role(key, duration).await;
            let took = started.elapsed();
            self.health
                .record("sts:AssumeRole", result.as_ref().err(), took);
            result
        })
    }

    fn role_arn<'a>(
        &'a self,
        path: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StsError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.role_arn(path, name).await;
            let took = started.elapsed();
            self.health
                .record("iam:GetRole", result.as_ref().err(), took);
            result
        })
    }
}
