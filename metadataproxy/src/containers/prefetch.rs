//! Credentials ready before a container asks: when a container is indexed its role is resolved and
//! its cache slot held (so it is fetched now and refreshed ahead of expiry); when it leaves, the
//! hold is released, and a slot no running container holds is no longer refreshed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::container::{Container, short};
use super::index::Change;
use super::settings::ContainerRole;
use super::sync::IndexListener;
use crate::creds::Resolver;
use crate::creds::{CacheKey, CredentialCache};
use crate::policy::{AssignedBy, Gate, Subject};
use crate::role::RoleAssignment;

/// What is held for one container.
#[derive(Debug)]
enum Hold {
    /// Its role is being resolved (the number tells this attempt from a later one).
    Pending(u64),
    /// Its cache slot is held.
    Held(CacheKey),
}

#[derive(Debug, Default)]
struct Holds {
    by_container: HashMap<String, Hold>,
    next: u64,
}

/// The listener that prefetches and releases credentials for containers.
#[derive(Debug, Clone)]
pub struct Prefetcher {
    resolver: Arc<Resolver>,
    cache: Arc<CredentialCache>,
    default_role: Option<Arc<RoleAssignment>>,
    policy: Gate,
    holds: Arc<Mutex<Holds>>,
}

impl Prefetcher {
    /// A prefetcher; `default_role` is `DEFAULT_ROLE`, used by containers that name no role.
    pub fn new(
        resolver: Arc<Resolver>,
        cache: Arc<CredentialCache>,
        default_role: Option<Arc<RoleAssignment>>,
    ) -> Self {
        Self {
            resolver,
            cache,
            default_role,
            policy: Gate::default(),
            holds: Arc::default(),
        }
    }

    /// This prefetcher, fetching only roles `policy` allows the container.
    #[must_use]
    pub fn with_policy(mut self, policy: Gate) -> Self {
        self.policy = policy;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The assignment the container's requests will use, if any.
    fn assignment(&self, container: &Container) -> Option<Arc<RoleAssignment>> {
        match &container.role {
            ContainerRole::Role(a) => Some(Arc::clone(a)),
            ContainerRole::Default(session) => self
                .default_role
                .as_ref()
                .map(|r| RoleAssignment::with_session(r, session)),
            ContainerRole::Invalid(_) => None,
        }
    }

    fn acquire(&self, container: &Container) {
        let Some(assignment) = self.assignment(container) else {
            return;
        };
        let attempt = {
            let mut holds = self.lock();
            holds.next += 1;
            let attempt = holds.next;
            if let Some(Hold::Held(old)) = holds
                .by_container
                .insert(container.id.clone(), Hold::Pending(attempt))
            {
                self.cache.release(&old);
            }
            attempt
        };
        let this = self.clone();
        let (id, name) = (container.id.clone(), container.name.clone());
        let (workload, cgroup) = (Arc::clone(&container.workload), container.cgroup.clone());
        let assigned_by = match container.role {
            ContainerRole::Default(_) => AssignedBy::DefaultRole,
            _ => AssignedBy::Workload,
        };
        // Resolving may call iam:GetRole: never on the synchroniser's path.
        tokio::spawn(async move {
            let key = match this.resolver.cache_key(&assignment).await {
                Ok((key, arn)) => {
                    let subject = Subject {
                        assigned_by,
                        workload: Some(&workload),
                        cgroup: cgroup.as_deref(),
                    };
                    if let Err(refused) = this.policy.check(&subject, &arn, &key.role_arn) {
                        tracing::info!(container = %name, id = short(&id), role_arn = %key.role_arn, rule = %refused.rule, reason = %refused.why, "not prefetched: the role policy refuses the container its role");
                        this.forget(&id, attempt);
                        return;
                    }
                    key
                }
                Err(e) => {
                    tracing::warn!(container = %name, id = short(&id), role = %assignment.role, error = %e, "cannot prefetch the container's credentials");
                    this.forget(&id, attempt);
                    return;
                }
            };
            let mut holds = this.lock();
            // The container may have left (or changed) while its role was being resolved.
            if matches!(holds.by_container.get(&id), Some(Hold::Pending(a)) if *a == attempt) {
                this.cache.retain(&key);
                tracing::debug!(container = %name, id = short(&id), role = %key.role_arn, "credentials prefetched for container");
                holds.by_container.insert(id, Hold::Held(key));
            }
        });
    }

    /// Drops the pending hold of attempt `attempt` for container `id` (not a later one's).
    fn forget(&self, id: &str, attempt: u64) {
        let mut holds = self.lock();
        if matches!(holds.by_container.get(id), Some(Hold::Pending(a)) if *a == attempt) {
            holds.by_container.remove(id);
        }
    }

    fn release(&self, container: &Container) {
        if let Some(Hold::Held(key)) = self.lock().by_container.remove(&container.id) {
            self.cache.release(&key);
        }
    }

    /// How many containers hold a cache slot (for tests and metrics).
    pub fn held(&self) -> usize {
        self.lock()
            .by_container
            .values()
            .filter(|h| matches!(h, Hold::Held(_)))
            .count()
    }
}

impl IndexListener for Prefetcher {
    fn changed(&self, change: &Change) {
        for container in &change.removed {
            self.release(container);
        }
        for container in &change.added {
            self.acquire(container);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::clock::ManualClock;
    use crate::containers::fake::info;
    use crate::creds::CredentialCacheConfig;
    use crate::creds::fake::FakeSts;
    use crate::role::{AccountMap, RoleSpec};

    fn setup(
        default_role: Option<&str>,
    ) -> (ManualClock, Arc<FakeSts>, Arc<CredentialCache>, Prefetcher) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let sts = FakeSts::new(&clock, Duration::ZERO);
        let cache = CredentialCache::new(
            sts.clone(),
            Arc::new(clock.clone()),
            CredentialCacheConfig {
                capacity: NonZeroUsize::new(16).unwrap(),
                threshold: Duration::from_secs(15 * 60),
                session_duration: Duration::from_secs(3600),
                idle_after: Duration::from_secs(7200),
                max_calls_per_second: std::num::NonZeroU32::new(10_000).unwrap(),
            },
        );
        let resolver = Arc::new(Resolver::new(
            AccountMap::default(),
            Some("123456789012".into()),
            None,
            sts.clone(),
            Arc::new(clock.clone()),
        ));
        let default_role =
            default_role.map(|r| Arc::new(RoleAssignment::from_role(RoleSpec::parse(r).unwrap())));
        let prefetcher = Prefetcher::new(resolver, Arc::clone(&cache), default_role);
        (clock, sts, cache, prefetcher)
    }

    fn added(c: &Container) -> Change {
        Change {
            removed: vec![],
            added: vec![Arc::new(c.clone())],
        }
    }

    fn removed(c: &Container) -> Change {
        Change {
            removed: vec![Arc::new(c.clone())],
            added: vec![],
        }
    }

    /// Lets the background fetches run to completion: with the runtime's time paused, the sleep
    /// ends only once every other task is idle (however slowly this machine schedules them).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_container_is_prefetched_and_held_until_it_leaves() {
        let (clock, sts, cache, prefetcher) = setup(None);
        let margin = Duration::from_secs(300);
        let a = Container::new(&info("a", "172.17.0.2", &["IAM_ROLE=web"]), None);
        let b = Container::new(&info("b", "172.17.0.3", &["IAM_ROLE=web"]), None);
        prefetcher.changed(&added(&a));
        prefetcher.changed(&added(&b));
        settle().await;
        assert_eq!(
            sts.calls.load(Ordering::SeqCst),
            1,
            "one role, one AssumeRole"
        );
        assert_eq!(prefetcher.held(), 2);
        clock.advance(Duration::from_secs(2 * 3600 + 60));
        assert_eq!(
            cache.refresh_due(margin),
            1,
            "held past idle: still refreshed"
        );
        settle().await;
        prefetcher.changed(&removed(&a));
        clock.advance(Duration::from_secs(46 * 60));
        assert_eq!(cache.refresh_due(margin), 1, "b still runs");
        settle().await;
        prefetcher.changed(&removed(&b));
        clock.advance(Duration::from_secs(46 * 60));
        assert_eq!(
            cache.refresh_due(margin),
            0,
            "no container left: left to expire"
        );
        assert_eq!(prefetcher.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn roles_the_policy_refuses_are_not_prefetched() {
        let (_, sts, _, prefetcher) = setup(Some("fallback"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "rules": [
                {"match": {"labels": {"team": "web"}}, "allow": ["web"]},
                {"match": {"assigned_by": ["default_role"]}, "allow": ["fallback"]}
            ]}"#,
        )
        .unwrap();
        let file = Arc::new(crate::policy::PolicyFile::load(&path).unwrap());
        let prefetcher = prefetcher.with_policy(Gate::new(Some(file)));
        let mut labelled = info("a", "172.17.0.2", &["IAM_ROLE=web"]);
        labelled.labels.insert("team".into(), "web".into());
        let allowed = Container::new(&labelled, None);
        let unlabelled = Container::new(&info("b", "172.17.0.3", &["IAM_ROLE=web"]), None);
        let admin = Container::new(&info("c", "172.17.0.4", &["IAM_ROLE=admin"]), None);
        let plain = Container::new(&info("d", "172.17.0.5", &[]), None);
        for c in [&allowed, &unlabelled, &admin, &plain] {
            prefetcher.changed(&added(c));
        }
        settle().await;
        // `web` for the labelled container and DEFAULT_ROLE for the plain one; nothing else.
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(prefetcher.held(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn containers_with_different_session_tags_never_share_credentials() {
        let (_, sts, cache, prefetcher) = setup(None);
        let tags = crate::role::TagsConfig {
            tags: crate::role::TagsConfig::parse_tags("ns=Namespace,app=Labels:app").unwrap(),
            transitive: Vec::new(),
            source_identity: None,
        };
        let with = |id: &str, ns: &str| {
            let mut i = info(id, "172.17.0.9", &["IAM_ROLE=web"]);
            i.labels
                .insert(crate::policy::NAMESPACE_LABEL.into(), ns.into());
            i.labels.insert("app".into(), "api".into());
            Container::with_tags(&i, None, &tags)
        };
        let (a, b, c) = (
            with("a", "payments"),
            with("b", "payments"),
            with("c", "web"),
        );
        for x in [&a, &b, &c] {
            prefetcher.changed(&added(x));
        }
        settle().await;
        // a and b carry equal tags: one credential set; c's namespace differs: its own.
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.len(), 2);
        let ContainerRole::Role(role) = &c.role else {
            panic!("{:?}", c.role)
        };
        let context = role.context.as_deref().unwrap();
        assert_eq!(context.to_string(), "ns=web,app=api");
    }

    #[tokio::test(start_paused = true)]
    async fn default_role_is_prefetched_for_containers_without_one_and_invalid_ones_are_not() {
        let (_, sts, _, prefetcher) = setup(Some("fallback"));
        let plain = Container::new(&info("p", "172.17.0.2", &[]), None);
        let bad = Container::new(&info("x", "172.17.0.3", &["IAM_ROLE"]), None);
        prefetcher.changed(&added(&plain));
        prefetcher.changed(&added(&bad));
        settle().await;
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        assert_eq!(prefetcher.held(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_gone_before_its_role_resolved_holds_nothing() {
        let (_, _, _, prefetcher) = setup(None);
        let a = Container::new(&info("a", "172.17.0.2", &["IAM_ROLE=web"]), None);
        prefetcher.changed(&added(&a));
        prefetcher.changed(&removed(&a));
        settle().await;
        assert_eq!(prefetcher.held(), 0);
    }
}
