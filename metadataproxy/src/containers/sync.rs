//! Keeps the container index equal to Docker's running containers: a full listing on every
//! (re)connection, then the event stream; reconnects with backoff when dockerd goes away, serving
//! what it knows meanwhile.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use super::container::{Container, ContainerInfo, short};
use super::index::{Change, ContainerIndex};
use super::source::{Connection, ContainerSource, Event, SourceError};
use super::unreadable::Unreadable;
use crate::role::{SessionKey, TagsConfig};

/// How far back events are replayed on subscribing (covers the listing, and clock rounding).
const REPLAY: Duration = Duration::from_secs(2);
/// How many containers are inspected at once during a full listing.
const INSPECT_CONCURRENCY: usize = 8;

/// Told of every change of the index that matters to roles (prefetch, release).
pub trait IndexListener: Send + Sync + fmt::Debug {
    /// Containers were removed from or added to the index.
    fn changed(&self, change: &Change);
}

/// A listener that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListener;

impl IndexListener for NoListener {
    fn changed(&self, _: &Change) {}
}

/// The synchroniser's settings.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `ROLE_SESSION_KEY`.
    pub session_key: Option<SessionKey>,
    /// `SESSION_TAGS`, `SESSION_TAGS_TRANSITIVE`, `SOURCE_IDENTITY`.
    pub tags: TagsConfig,
    /// First delay before reconnecting; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between reconnection attempts.
    pub max_backoff: Duration,
    /// `DOCKER_PING_INTERVAL`: how often the daemon must prove it still answers while the event
    /// stream is open, and how long it (or a new connection) may take; otherwise the connection is
    /// dropped, and the index resynchronised on the next one.
    pub ping_interval: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            session_key: None,
            tags: TagsConfig::default(),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// Feeds the index from a container source.
#[derive(Debug)]
pub struct Syncer {
    source: Arc<dyn ContainerSource>,
    index: Arc<ContainerIndex>,
    listener: Arc<dyn IndexListener>,
    config: SyncConfig,
}

impl Syncer {
    /// A synchroniser writing `index` and telling `listener`.
    pub fn new(
        source: Arc<dyn ContainerSource>,
        index: Arc<ContainerIndex>,
        listener: Arc<dyn IndexListener>,
        config: SyncConfig,
    ) -> Self {
        Self {
            source,
            index,
            listener,
            config,
        }
    }

    /// Runs forever: connect, list, follow events; on failure wait and start again.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        loop {
            let mut synced = false;
            let error = self.session(&mut synced, failures > 0).await;
            self.index.set_live(false);
            let text = error.to_string();
            if synced {
                failures = 0;
                last_error.clear();
            }
            let delay = self.backoff(failures);
            let runtime = self.source.runtime();
            if synced {
                tracing::warn!(runtime, url = %self.source.describe(), error = %text, retry_in = ?delay, containers = self.index.len(), "lost {runtime}; still serving the containers known so far, reconnecting");
            } else if text != last_error {
                tracing::error!(runtime, url = %self.source.describe(), error = %text, retry_in = ?delay, "{runtime} is unreachable: {}; retrying with backoff", unreachable_effect(runtime));
            } else {
                tracing::debug!(runtime, url = %self.source.describe(), error = %text, retry_in = ?delay, "{runtime} still unreachable");
            }
            last_error = text;
            failures = failures.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.config
            .min_backoff
            .saturating_mul(1 << failures.min(16))
            .min(self.config.max_backoff)
    }

    /// One connection: returns why it ended; sets `synced` once the index is synchronised.
    async fn session(&self, synced: &mut bool, after_failures: bool) -> SourceError {
        // A hung daemon may accept a connection and never answer on it.
        let every = self.config.ping_interval;
        let conn = match tokio::time::timeout(every, self.source.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return e,
            Err(_) => return SourceError::Unresponsive(every),
        };
        let since = SystemTime::now()
            .checked_sub(REPLAY)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut events = conn.events(since);
        // Running containers this connection could not describe: left out, asked about again
        // soon, then less often. A new connection lists and inspects everything anew.
        let mut unreadable = Unreadable::default();
        if let Err(e) = self.resync(conn.as_ref(), &mut unreadable).await {
            return e;
        }
        *synced = true;
        self.index.set_live(true);
        let again = if after_failures { " again" } else { "" };
        let runtime = self.source.runtime();
        tracing::info!(runtime, url = %self.source.describe(), containers = self.index.len(), unreadable = unreadable.len(), "{runtime} reachable{again}; container index synchronised");
        // An idle stream looks the same whether the connection is alive or silently dead (a
        // half-open TCP connection, a hung dockerd): ask for a ping now and then.
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut suspects = HashSet::new();
        // The undescribed are asked about again soon (a container being created may answer an
        // error for a moment), then less and less often, at least once per liveness interval.
        let mut retry_in = self.config.min_backoff;
        let retry = tokio::time::sleep(retry_in);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                item = events.next() => match item {
                    None => return SourceError::StreamEnded,
                    Some(Err(e)) => return e,
                    Some(Ok(event)) => {
                        let before = unreadable.len();
                        if let Err(e) = self.apply(conn.as_ref(), event, &mut unreadable).await {
                            return e;
                        }
                        if unreadable.len() > before {
                            retry_in = self.config.min_backoff;
                            retry.as_mut().reset(tokio::time::Instant::now() + retry_in);
                        }
                    }
                },
                () = &mut retry, if !unreadable.is_empty() => {
                    match tokio::time::timeout(every, self.retry(conn.as_ref(), &mut unreadable)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return e,
                        Err(_) => return SourceError::Unresponsive(every),
                    }
                    retry_in = retry_in.saturating_mul(2).min(every);
                    retry.as_mut().reset(tokio::time::Instant::now() + retry_in);
                },
                _ = ping.tick() => match tokio::time::timeout(every, conn.ping()).await {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(running))) => {
                        // An event on its way makes a difference once; a missed one, every time.
                        // The undescribed run but are left out on purpose.
                        let now = self.differences(running, &unreadable);
                        let kept = now.intersection(&suspects).count();
                        if kept > 0 {
                            return SourceError::Drifted(kept);
                        }
                        suspects = now;
                    }
                    // Refused or failed at once: dockerd is shutting down or restarting, and the
                    // stream may still bring the last events (a graceful stop's `die`s) before it
                    // ends; dropping it now would lose them. Only silence (a timeout) is death.
                    Ok(Err(e)) => {
                        tracing::debug!(runtime = self.source.runtime(), error = %e, "liveness check failed; following the event stream until it ends");
                        suspects.clear();
                    }
                    Err(_) => return SourceError::Unresponsive(every),
                },
            }
        }
    }

    /// The ids running but not indexed, or indexed but not running, leaving out those known
    /// to be running undescribed.
    fn differences(&self, running: Vec<String>, unreadable: &Unreadable) -> HashSet<String> {
        let mut differ = self.index.differences(running);
        differ.retain(|id| !unreadable.contains(id));
        differ
    }

    /// Lists and inspects every running container and makes the index exactly that, less the
    /// containers the runtime could not describe (noted in `unreadable`).
    async fn resync(
        &self,
        conn: &dyn Connection,
        unreadable: &mut Unreadable,
    ) -> Result<(), SourceError> {
        let ids = conn.running().await?;
        let runtime = self.source.runtime();
        // Each inspection is made when its turn comes (a boxed request future is kilobytes:
        // making them all first held megabytes per thousand containers) and becomes its index
        // entry as it arrives, so the inspections themselves are never all held at once. A
        // failed connection ends the resync; a container the runtime cannot describe is left out.
        let ids = &ids;
        let mut inspections = futures_util::stream::iter(0..ids.len())
            .map(|i| async move { (i, conn.inspect(&ids[i]).await) })
            .buffer_unordered(INSPECT_CONCURRENCY);
        let mut containers: Vec<Container> = Vec::new();
        while let Some((i, inspected)) = inspections.next().await {
            match inspected {
                Ok(Some(info)) if info.running => containers.push(self.entry(&info)),
                Ok(_) => {}
                Err(e) if e.is_about_one_container() => unreadable.note(runtime, &ids[i], &e),
                Err(e) => return Err(e),
            }
        }
        drop(inspections);
        self.index.set_unreadable(unreadable.ids());
        let change = self.index.replace_all(containers);
        self.notify(&change);
        drop(change);
        // The old index and the listing are free now; give their pages back to the system
        // rather than keep the peak for good.
        crate::memory::release_free_pages();
        Ok(())
    }

    /// Applies one event. Only a failure to reach Docker is an error.
    async fn apply(
        &self,
        conn: &dyn Connection,
        event: Event,
        unreadable: &mut Unreadable,
    ) -> Result<(), SourceError> {
        let change = match &event {
            Event::Die(id) | Event::Destroy(id) => {
                unreadable.forget(self.source.runtime(), id, false);
                self.index.remove(id)
            }
            Event::Start(id) | Event::Changed(id) => self.describe(conn, id, unreadable).await?,
        };
        self.index.set_unreadable(unreadable.ids());
        tracing::debug!(
            ?event,
            containers = self.index.len(),
            runtime = self.source.runtime(),
            "container event applied"
        );
        self.notify(&change);
        Ok(())
    }

    /// Inspects `id` and indexes what it is now: running, indexed; gone or stopped, forgotten
    /// (it must not be served); not describable, forgotten too (its old description may no
    /// longer hold) and noted in `unreadable`. Only a failure to reach the runtime is an error.
    async fn describe(
        &self,
        conn: &dyn Connection,
        id: &str,
        unreadable: &mut Unreadable,
    ) -> Result<Change, SourceError> {
        let runtime = self.source.runtime();
        Ok(match conn.inspect(id).await {
            Ok(Some(info)) if info.running => {
                unreadable.forget(runtime, id, true);
                self.index.upsert(self.entry(&info))
            }
            Ok(_) => {
                unreadable.forget(runtime, id, false);
                self.index.remove(id)
            }
            Err(e) if e.is_about_one_container() => {
                unreadable.note(runtime, id, &e);
                self.index.remove(id)
            }
            Err(e) => return Err(e),
        })
    }

    /// Asks again about every container that could not be described.
    async fn retry(
        &self,
        conn: &dyn Connection,
        unreadable: &mut Unreadable,
    ) -> Result<(), SourceError> {
        if unreadable.is_empty() {
            return Ok(());
        }
        for id in unreadable.ids() {
            let change = self.describe(conn, &id, unreadable).await?;
            self.notify(&change);
        }
        self.index.set_unreadable(unreadable.ids());
        Ok(())
    }

    fn entry(&self, info: &ContainerInfo) -> Container {
        Container::with_tags(info, self.config.session_key.as_ref(), &self.config.tags)
    }

    fn notify(&self, change: &Change) {
        for c in &change.removed {
            tracing::info!(container = %c.name, id = short(&c.id), "container left the index");
        }
        for c in &change.added {
            match &c.role {
                super::ContainerRole::Invalid(e) => {
                    tracing::warn!(container = %c.name, id = short(&c.id), error = %e, "container has malformed role settings: it gets no credentials");
                }
                role => {
                    tracing::info!(container = %c.name, id = short(&c.id), ips = ?c.ips, role = %RoleText(role), "container indexed");
                }
            }
        }
        if !change.is_empty() {
            self.listener.changed(change);
        }
    }
}

/// What callers lose while `runtime` cannot be reached.
fn unreachable_effect(runtime: &str) -> &'static str {
    if runtime == "Docker" {
        "containers cannot be identified until it is back (mapping-file and DEFAULT_ROLE callers are still served)"
    } else {
        "its containers not seen yet get no credentials until it is back (other callers are still served)"
    }
}

/// A container's role for logs (never the external id).
struct RoleText<'a>(&'a super::ContainerRole);

impl fmt::Display for RoleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            super::ContainerRole::Role(a) => write!(f, "{}", a.role),
            super::ContainerRole::Default(_) => f.write_str("DEFAULT_ROLE"),
            super::ContainerRole::Invalid(_) => f.write_str("none (invalid settings)"),
        }
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
