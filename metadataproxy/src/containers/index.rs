//! The container index: running containers by id and by IP address, read on every request without
//! asking Docker, written only by the synchroniser.
//!
//! An address claimed by two indexed containers identifies neither (Docker reuses addresses, and
//! a missed `die` must not hand the old container's role to the new one: Lyft issue #19); nor
//! does a cgroup claimed by two.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::container::{Container, short};
use crate::cgroup::ancestors;

/// How long a caller whose container is not indexed yet is given for its container's `start`
/// event to arrive (a container may call as soon as it runs, before the event is applied). Only
/// such callers wait, and only while the runtime's events are followed.
pub const START_GRACE: Duration = Duration::from_millis(500);

/// How the index changed, for the listeners that act on roles (prefetch, release).
#[derive(Debug, Default)]
pub struct Change {
    /// Entries gone, or replaced by an entry with a different role.
    pub removed: Vec<Arc<Container>>,
    /// New entries, or replacements with a different role.
    pub added: Vec<Arc<Container>>,
}

impl Change {
    /// Whether nothing changed that matters to listeners.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }

    fn merge(&mut self, other: Change) {
        self.removed.extend(other.removed);
        self.added.extend(other.added);
    }
}

#[derive(Debug, Default)]
#[expect(
    clippy::struct_field_names,
    reason = "each map is the index by one key"
)]
struct State {
    by_id: HashMap<String, Arc<Container>>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    /// Containers by their recorded cgroup path.
    by_cgroup: HashMap<String, Vec<String>>,
}

impl State {
    fn insert(&mut self, container: Container) -> Change {
        let mut change = self.remove(&container.id);
        let container = Arc::new(container);
        for ip in &container.ips {
            let owners = self.by_ip.entry(*ip).or_default();
            if !owners.is_empty() {
                tracing::warn!(
                    %ip,
                    container = %container.name,
                    others = ?owners.iter().map(|id| short(id)).collect::<Vec<_>>(),
                    "address claimed by more than one container: it identifies none of them"
                );
            }
            owners.push(container.id.clone());
        }
        if let Some(cgroup) = &container.cgroup {
            let owners = self.by_cgroup.entry(cgroup.clone()).or_default();
            if !owners.is_empty() {
                tracing::warn!(
                    cgroup = %cgroup,
                    container = %container.name,
                    others = ?owners.iter().map(|id| short(id)).collect::<Vec<_>>(),
                    "cgroup claimed by more than one container: it identifies none of them"
                );
            }
            owners.push(container.id.clone());
        }
        match change.removed.pop() {
            // Same role: not a change for the listeners (a rename, a network connect).
            Some(old) if old.role == container.role => {}
            Some(old) => {
                change.removed.push(old);
                change.added.push(Arc::clone(&container));
            }
            None => change.added.push(Arc::clone(&container)),
        }
        self.by_id.insert(container.id.clone(), container);
        change
    }

    fn remove(&mut self, id: &str) -> Change {
        let Some(old) = self.by_id.remove(id) else {
            return Change::default();
        };
        for ip in &old.ips {
            if let Some(owners) = self.by_ip.get_mut(ip) {
                owners.retain(|o| o != id);
                if owners.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        if let Some(cgroup) = &old.cgroup
            && let Some(owners) = self.by_cgroup.get_mut(cgroup)
        {
            owners.retain(|o| o != id);
            if owners.is_empty() {
                self.by_cgroup.remove(cgroup);
            }
        }
        Change {
            removed: vec![old],
            added: Vec::new(),
        }
    }
}

/// Running containers, by id and by address.
#[derive(Debug)]
pub struct ContainerIndex {
    state: RwLock<State>,
    /// Bumped on every write, so a lookup can wait for the index to catch up.
    generation: watch::Sender<u64>,
    /// Whether the index follows Docker's events right now.
    live: AtomicBool,
    /// The ids of running containers the runtime could not describe, left out: a caller in
    /// one is refused, not taken for a non-container (`/metrics` counts them).
    unreadable: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for ContainerIndex {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            generation: watch::Sender::new(0),
            live: AtomicBool::new(false),
            unreadable: std::sync::Mutex::default(),
        }
    }
}

impl ContainerIndex {
    /// An empty index.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether the index is synchronised with Docker and following its events.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Marks the index as following Docker's events (or not, while reconnecting).
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.bump();
    }

    /// How many running containers the runtime could not describe (left out of the index).
    pub fn unreadable(&self) -> usize {
        self.unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether container `id` runs but the runtime could not describe it.
    pub fn is_unreadable(&self, id: &str) -> bool {
        self.unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// The running containers the runtime could not describe now.
    pub fn set_unreadable(&self, ids: impl IntoIterator<Item = String>) {
        *self
            .unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ids.into_iter().collect();
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        // What a connection remembered of its caller may no longer hold.
        crate::generation::bump();
    }

    /// `find(self)`, waiting up to `grace` for the index to change until it finds something.
    ///
    /// A container can call before its `start` event has been applied; a caller the index does
    /// not know yet is given that long. Not waited for while Docker is not followed.
    pub async fn wait_for<T>(
        &self,
        grace: Duration,
        find: impl Fn(&Self) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if let Some(found) = find(self) {
                return Some(found);
            }
            if !self.is_live() {
                return None;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Whether the index follows Docker's events, waiting up to `grace` for it to (the first
    /// synchronisation after start or a reconnection may be under way).
    pub async fn wait_live(&self, grace: Duration) -> bool {
        let mut changes = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.is_live() {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.is_live(),
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The running container with this full id (what a cgroup path names).
    pub fn by_id(&self, id: &str) -> Option<Arc<Container>> {
        self.read().by_id.get(id).cloned()
    }

    /// The running container with this full id, given [`START_GRACE`] to be indexed: a cgroup
    /// that names a container is proof it exists, even before its `start` event is applied.
    pub async fn by_id_soon(&self, id: &str) -> Option<Arc<Container>> {
        match self.by_id(id) {
            Some(found) => Some(found),
            None => self.wait_for(START_GRACE, |i| i.by_id(id)).await,
        }
    }

    /// The one running container with this address; `None` if none or several claim it.
    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<Container>> {
        let state = self.read();
        match state.by_ip.get(&ip.to_canonical())?.as_slice() {
            [id] => state.by_id.get(id).cloned(),
            _ => None,
        }
    }

    /// The container a process in the cgroup at `path` runs in: the one whose recorded cgroup is
    /// `path` or its nearest ancestor (`/` never is). `None` if no recorded cgroup contains
    /// `path`, or the nearest one is claimed by several containers.
    pub fn in_cgroup(&self, path: &str) -> Option<Arc<Container>> {
        let state = self.read();
        let owners = ancestors(path)
            .take_while(|p| *p != "/")
            .find_map(|p| state.by_cgroup.get(p))?;
        match owners.as_slice() {
            [id] => state.by_id.get(id).cloned(),
            _ => None,
        }
    }

    /// Every running container for which `pred` holds.
    pub fn matching(&self, pred: impl Fn(&Container) -> bool) -> Vec<Arc<Container>> {
        self.read()
            .by_id
            .values()
            .filter(|c| pred(c))
            .cloned()
            .collect()
    }

    /// Every running container.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.matching(|_| true)
    }

    /// The ids in `running` that are not indexed and the indexed ids not in `running`, compared
    /// in place (no copy of every indexed id).
    pub fn differences(&self, running: Vec<String>) -> std::collections::HashSet<String> {
        let running: std::collections::HashSet<String> = running.into_iter().collect();
        let state = self.read();
        let gone = state
            .by_id
            .keys()
            .filter(|id| !running.contains(id.as_str()))
            .cloned();
        let mut differ: std::collections::HashSet<String> = gone.collect();
        differ.extend(
            running
                .into_iter()
                .filter(|id| !state.by_id.contains_key(id.as_str())),
        );
        differ
    }

    /// How many running containers are indexed.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether no container is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a container, or replaces the entry with the same id.
    pub fn upsert(&self, container: Container) -> Change {
        let change = self.write().insert(container);
        self.bump();
        change
    }

    /// Removes a container (it died or was destroyed); unknown ids are ignored.
    pub fn remove(&self, id: &str) -> Change {
        let change = self.write().remove(id);
        self.bump();
        change
    }

    /// Makes the index exactly `containers` (after a full listing), in one step.
    pub fn replace_all(&self, containers: Vec<Container>) -> Change {
        let mut state = self.write();
        let keep: std::collections::HashSet<String> =
            containers.iter().map(|c| c.id.clone()).collect();
        let gone: Vec<String> = state
            .by_id
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        let mut change = Change::default();
        for id in gone {
            change.merge(state.remove(&id));
        }
        for container in containers {
            change.merge(state.insert(container));
        }
        drop(state);
        self.bump();
        change
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
