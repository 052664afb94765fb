//! A fake Docker for unit tests: containers and events driven by the test, and an on/off switch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use super::container::ContainerInfo;
use super::source::{Connection, ContainerSource, Event, SourceError};
use futures_util::future::BoxFuture;

type Sender = mpsc::UnboundedSender<Result<Event, SourceError>>;

#[derive(Debug, Default)]
struct Inner {
    down: bool,
    containers: HashMap<String, ContainerInfo>,
    streams: Vec<Sender>,
    connects: usize,
    hung: bool,
    /// Streams that get nothing any more but stay open.
    silenced: Vec<Sender>,
    /// Containers whose inspection fails (dockerd answers an error about them alone).
    unreadable: std::collections::HashSet<String>,
    /// Inspections asked for, by id.
    inspections: HashMap<String, usize>,
}

/// The fake daemon. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

/// A container as the tests write them: `id` is repeated to 64 characters.
pub fn info(id: &str, ip: &str, env: &[&str]) -> ContainerInfo {
    ContainerInfo {
        id: full_id(id),
        name: format!("c-{id}"),
        running: true,
        hostname: id.to_owned(),
        env: env.iter().map(|e| (*e).to_owned()).collect(),
        ips: ip.parse().into_iter().collect(),
        ..ContainerInfo::default()
    }
}

/// `id` repeated to 64 characters.
pub fn full_id(id: &str) -> String {
    id.repeat(64 / id.len())
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends an event to every open stream.
    pub fn emit(&self, event: &Event) {
        self.lock()
            .streams
            .retain(|s| s.send(Ok(event.clone())).is_ok());
    }

    /// A container now running, without an event (as if started while we were disconnected).
    pub fn put(&self, info: ContainerInfo) {
        self.lock().containers.insert(info.id.clone(), info);
    }

    /// Starts a container: it runs, and a `start` event follows.
    pub fn start(&self, info: ContainerInfo) {
        let id = info.id.clone();
        self.put(info);
        self.emit(&Event::Start(id));
    }

    /// Stops a container: it no longer runs, and a `die` event follows.
    pub fn stop(&self, id: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.running = false;
        }
        self.emit(&Event::Die(id.to_owned()));
    }

    /// Removes a container without any event.
    pub fn forget(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// Takes dockerd down (open streams end, connections fail) or brings it back.
    pub fn set_down(&self, down: bool) {
        let mut inner = self.lock();
        inner.down = down;
        if down {
            inner.streams.clear();
        }
    }

    /// Fails the open streams with an error (a dropped connection).
    pub fn break_streams(&self) {
        for s in self.lock().streams.drain(..) {
            let _ = s.send(Err(SourceError::StreamEnded));
        }
    }

    /// Makes dockerd hang (pings and new connections never answer; open streams stay silent but
    /// open) or answer again.
    pub fn set_hung(&self, hung: bool) {
        self.lock().hung = hung;
    }

    /// The open streams stop delivering events without ending (their connection died alone);
    /// the daemon itself keeps answering, and new connections work.
    pub fn silence_streams(&self) {
        let mut inner = self.lock();
        let streams = std::mem::take(&mut inner.streams);
        inner.silenced.extend(streams);
    }

    /// Makes the inspection of container `id` fail (`true`), as a dockerd answering a 500 about
    /// it alone, or succeed again.
    pub fn set_unreadable(&self, id: &str, unreadable: bool) {
        let mut inner = self.lock();
        if unreadable {
            inner.unreadable.insert(id.to_owned());
        } else {
            inner.unreadable.remove(id);
        }
    }

    /// How many times container `id` was inspected.
    pub fn inspections(&self, id: &str) -> usize {
        self.lock().inspections.get(id).copied().unwrap_or(0)
    }

    /// How many connections were attempted.
    pub fn connects(&self) -> usize {
        self.lock().connects
    }
}

impl ContainerSource for FakeRuntime {
    fn describe(&self) -> String {
        "fake://docker".into()
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, SourceError>> {
        let mut inner = self.lock();
        if inner.hung {
            inner.connects += 1;
            return Box::pin(std::future::pending());
        }
        inner.connects += 1;
        let result = if inner.down {
            Err(SourceError::Connect(Box::new(
                bollard::errors::Error::SocketNotFoundError("/fake/docker.sock".into()),
            )))
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            inner.streams.push(tx);
            Ok(Box::new(FakeConnection {
                docker: self.clone(),
                events: Mutex::new(Some(rx)),
            }) as Box<dyn Connection>)
        };
        Box::pin(std::future::ready(result))
    }
}

#[derive(Debug)]
struct FakeConnection {
    docker: FakeRuntime,
    events: Mutex<Option<mpsc::UnboundedReceiver<Result<Event, SourceError>>>>,
}

impl Connection for FakeConnection {
    fn events(&self, _since: SystemTime) -> BoxStream<'static, Result<Event, SourceError>> {
        let rx = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match rx {
            Some(rx) => futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .boxed(),
            None => futures_util::stream::empty().boxed(),
        }
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        let inner = self.docker.lock();
        let ids = inner
            .containers
            .values()
            .filter(|c| c.running)
            .map(|c| c.id.clone())
            .collect();
        Box::pin(std::future::ready(Ok(ids)))
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>> {
        let mut inner = self.docker.lock();
        *inner.inspections.entry(id.to_owned()).or_insert(0) += 1;
        let result = if inner.unreadable.contains(id) {
            Err(SourceError::Unreadable {
                call: "GET /containers/{id}/json",
                id: id.to_owned(),
                source: "Docker responded with status code 500: injected".into(),
            })
        } else {
            Ok(inner.containers.get(id).cloned())
        };
        Box::pin(std::future::ready(result))
    }

    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>> {
        if self.docker.lock().hung {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async move { self.running().await.map(Some) })
        }
    }
}
