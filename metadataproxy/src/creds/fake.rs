//! A fake STS for unit tests: counts and times calls, can be made slow, failing or throttling;
//! credentials name their session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{CacheKey, Credentials, Delivery, Secret, Sts, StsError, StsErrorKind};
use crate::clock::{Clock, ManualClock};
use futures_util::future::BoxFuture;

/// The fake.
#[derive(Debug)]
pub struct FakeSts {
    clock: ManualClock,
    /// `sts:AssumeRole` calls so far.
    pub calls: AtomicU64,
    /// When set, every call fails as if STS were unreachable.
    pub failing: AtomicBool,
    /// When set, every call is answered `Throttling`.
    pub throttling: AtomicBool,
    /// When each call started (tokio's clock, which tests may pause), in order.
    pub started: std::sync::Mutex<Vec<tokio::time::Instant>>,
    in_flight: AtomicU64,
    /// The most calls that were in progress at once.
    pub max_in_flight: AtomicU64,
    /// The role ARN of every `sts:AssumeRole` call, in order.
    pub assumed: std::sync::Mutex<Vec<String>>,
    delay: Duration,
    /// Whether calls may answer: while closed ([`Self::hold`]), each call waits in progress.
    open: tokio::sync::watch::Sender<bool>,
}

impl FakeSts {
    /// A fake answering after `delay`, with credentials valid for the requested duration.
    pub fn new(clock: &ManualClock, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock: clock.clone(),
            calls: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            throttling: AtomicBool::new(false),
            started: std::sync::Mutex::default(),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            assumed: std::sync::Mutex::default(),
            delay,
            open: tokio::sync::watch::Sender::new(true),
        })
    }

    /// Holds every call, started or to come, in progress until [`Self::release`].
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Lets the held calls (and later ones) answer.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// The calls in progress now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl Sts for FakeSts {
    fn assume_role<'a>(
        &'a self,
        key: &'a CacheKey,
        duration: Duration,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.assumed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(key.role_arn.to_string());
            self.started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(tokio::time::Instant::now());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // The sender lives as long as `self`, so the wait ends only when released.
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.throttling.load(Ordering::SeqCst) {
                return Err(StsError {
                    operation: "sts:AssumeRole",
                    kind: StsErrorKind::Throttled,
                    code: Some("Throttling".into()),
                    message: "Rate exceeded".into(),
                });
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(StsError {
                    operation: "sts:AssumeRole",
                    kind: StsErrorKind::Unavailable,
                    code: None,
                    message: "down".into(),
                });
            }
            let now = self.clock.now();
            Ok(Credentials {
                access_key_id: format!("ASIA{n:016}"),
                secret_access_key: Secret::new(format!("secret-{n}")),
                session_token: Secret::new(format!("token-{n}-{}", key.session_name)),
                expiration: now + duration,
                last_updated: now,
                assumed_role_arn: String::new(),
                assumed_role_id: String::new(),
                delivery: Delivery::default(),
            })
        })
    }

    fn role_arn<'a>(
        &'a self,
        path: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StsError>> {
        Box::pin(async move { Ok(format!("arn:aws:iam::999999999999:role{path}{name}")) })
    }
}
