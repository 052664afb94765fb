//! Unit tests of the synchroniser against the fake Docker: listing, events, reconnection.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::containers::fake::{FakeRuntime, full_id, info};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

/// Records every change it is told of, as `+name` / `-name`.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl IndexListener for Recorder {
    fn changed(&self, change: &Change) {
        let mut log = self.0.lock().unwrap();
        log.extend(change.removed.iter().map(|c| format!("-{}", c.name)));
        log.extend(change.added.iter().map(|c| format!("+{}", c.name)));
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn start(
    docker: &FakeRuntime,
) -> (
    Arc<ContainerIndex>,
    Arc<Recorder>,
    tokio::task::JoinHandle<()>,
) {
    let recorder = Arc::new(Recorder::default());
    let config = SyncConfig {
        session_key: None,
        tags: crate::role::TagsConfig::default(),
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ping_interval: Duration::from_millis(50),
    };
    let (index, task) = crate::containers::spawn(
        Arc::new(docker.clone()),
        Arc::clone(&recorder) as Arc<dyn IndexListener>,
        config,
    );
    (index, recorder, task)
}

/// Waits (up to 2 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn role_at(index: &ContainerIndex, addr: &str) -> Option<String> {
    index.by_ip(ip(addr)).map(|c| match &c.role {
        crate::containers::ContainerRole::Role(a) => a.role.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn lists_at_start_then_follows_events() {
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    let mut stopped = info("z", "172.17.0.9", &["IAM_ROLE=rz"]);
    stopped.running = false;
    docker.put(stopped);
    let (index, recorder, task) = start(&docker);
    eventually("initial listing", || index.len() == 1).await;
    assert_eq!(role_at(&index, "172.17.0.2").as_deref(), Some("ra"));
    assert_eq!(recorder.take(), ["+c-a"]);

    docker.start(info("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    eventually("start event", || index.len() == 2).await;
    assert_eq!(role_at(&index, "172.17.0.3").as_deref(), Some("rb"));

    docker.stop(&full_id("a"));
    eventually("die event", || index.len() == 1).await;
    assert_eq!(role_at(&index, "172.17.0.2"), None);
    assert_eq!(recorder.take(), ["+c-b", "-c-a"]);
    task.abort();
}

#[tokio::test]
async fn address_reused_after_die_gets_the_new_role() {
    let docker = FakeRuntime::default();
    let (index, _, task) = start(&docker);
    docker.start(info("a", "172.17.0.2", &["IAM_ROLE=old-role"]));
    eventually("a indexed", || index.len() == 1).await;
    docker.stop(&full_id("a"));
    docker.start(info("b", "172.17.0.2", &["IAM_ROLE=new-role"]));
    eventually("b indexed", || index.by_id(&full_id("b")).is_some()).await;
    assert_eq!(index.len(), 1);
    assert_eq!(role_at(&index, "172.17.0.2").as_deref(), Some("new-role"));
    task.abort();
}

#[tokio::test]
async fn network_change_and_vanished_container() {
    let docker = FakeRuntime::default();
    let (index, _, task) = start(&docker);
    docker.start(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    eventually("a indexed", || index.len() == 1).await;
    // Connected to another network: inspected again, new address.
    docker.put(info("a", "172.20.0.2", &["IAM_ROLE=ra"]));
    docker.emit(&Event::Changed(full_id("a")));
    eventually("new address", || index.by_ip(ip("172.20.0.2")).is_some()).await;
    assert!(index.by_ip(ip("172.17.0.2")).is_none());
    // A start event for a container already gone is not indexed; a known one is dropped.
    docker.emit(&Event::Start(full_id("g")));
    docker.forget(&full_id("a"));
    docker.emit(&Event::Changed(full_id("a")));
    eventually("a dropped", || index.is_empty()).await;
    task.abort();
}

#[tokio::test]
async fn keeps_serving_while_docker_is_down_then_resynchronises() {
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    docker.put(info("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    let (index, recorder, task) = start(&docker);
    eventually("initial listing", || index.len() == 2).await;
    recorder.take();

    docker.set_down(true);
    let connects = docker.connects();
    eventually("reconnection attempts", || {
        docker.connects() >= connects + 2
    })
    .await;
    assert_eq!(
        role_at(&index, "172.17.0.2").as_deref(),
        Some("ra"),
        "known containers still served"
    );

    // While it was down: b went away, c appeared (no events seen).
    docker.forget(&full_id("b"));
    docker.put(info("c", "172.17.0.4", &["IAM_ROLE=rc"]));
    docker.set_down(false);
    eventually("resynchronised", || index.by_id(&full_id("c")).is_some()).await;
    assert_eq!(index.len(), 2);
    assert_eq!(role_at(&index, "172.17.0.3"), None);
    assert_eq!(recorder.take(), ["-c-b", "+c-c"]);

    // A broken stream (not a down daemon) is recovered the same way.
    docker.break_streams();
    docker.start(info("d", "172.17.0.5", &["IAM_ROLE=rd"]));
    eventually("after a broken stream", || index.len() == 3).await;
    task.abort();
}

#[tokio::test]
async fn unreachable_at_start_keeps_retrying() {
    let docker = FakeRuntime::default();
    docker.set_down(true);
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    let (index, _, task) = start(&docker);
    eventually("retries", || docker.connects() >= 3).await;
    assert!(index.is_empty());
    docker.set_down(false);
    eventually("synchronised once up", || index.len() == 1).await;
    task.abort();
}

#[tokio::test]
async fn a_hung_daemon_is_noticed_by_its_ping_and_resynchronised_afterwards() {
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    docker.put(info("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    let (index, recorder, task) = start(&docker);
    eventually("initial listing", || index.len() == 2 && index.is_live()).await;
    recorder.take();

    // The stream stays open but silent, and nothing answers: only the ping can tell.
    docker.set_hung(true);
    eventually("not live once a ping goes unanswered", || !index.is_live()).await;
    let connects = docker.connects();
    eventually("reconnection attempts give up in time too", || {
        docker.connects() >= connects + 2
    })
    .await;
    assert_eq!(role_at(&index, "172.17.0.2").as_deref(), Some("ra"));

    // Meanwhile b stopped and c started; no event ever reached us.
    docker.forget(&full_id("b"));
    docker.put(info("c", "172.17.0.4", &["IAM_ROLE=rc"]));
    docker.set_hung(false);
    eventually("live and resynchronised", || {
        index.is_live() && index.by_id(&full_id("c")).is_some()
    })
    .await;
    assert_eq!(role_at(&index, "172.17.0.3"), None);
    assert_eq!(recorder.take(), ["-c-b", "+c-c"]);
    task.abort();
}

#[tokio::test]
async fn a_stream_silenced_alone_is_caught_by_comparing_the_listing() {
    let docker = FakeRuntime::default();
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    docker.put(info("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    let (index, recorder, task) = start(&docker);
    eventually("initial listing", || index.len() == 2 && index.is_live()).await;
    recorder.take();
    let connects = docker.connects();

    // Pings still answer; only the events are lost.
    docker.silence_streams();
    docker.stop(&full_id("b"));
    docker.start(info("c", "172.17.0.4", &["IAM_ROLE=rc"]));
    eventually("the missed events made up for", || {
        index.by_id(&full_id("c")).is_some() && index.by_id(&full_id("b")).is_none()
    })
    .await;
    assert!(docker.connects() > connects, "by reconnecting");
    assert_eq!(recorder.take(), ["-c-b", "+c-c"]);
    task.abort();
}

#[tokio::test]
async fn no_reconnection_while_every_event_arrives() {
    let docker = FakeRuntime::default();
    let (index, _, task) = start(&docker);
    eventually("live", || index.is_live()).await;
    let connects = docker.connects();
    // Containers start and stop all the time; every event arrives, so no reconnection.
    for n in 0..20 {
        let id = format!("{:x}", n % 16);
        docker.start(info(&id, "172.17.0.2", &["IAM_ROLE=r"]));
        tokio::time::sleep(Duration::from_millis(15)).await;
        docker.stop(&full_id(&id));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    eventually("all applied", || index.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        docker.connects(),
        connects,
        "reconnected although no event was missed"
    );
    task.abort();
}

/// A connection listing many containers that counts the inspections in existence at once.
#[derive(Debug, Default)]
struct CountingConnection {
    alive: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

/// One inspection in existence (made, not yet dropped).
struct Alive(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Connection for CountingConnection {
    fn events(&self, _: std::time::SystemTime) -> BoxStream<'static, Result<Event, SourceError>> {
        futures_util::stream::pending().boxed()
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async { Ok((0..1000).map(|n| full_id(&format!("{n:04x}"))).collect()) })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.alive.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        let alive = Alive(Arc::clone(&self.alive));
        Box::pin(async move {
            let _alive = alive;
            tokio::task::yield_now().await;
            Ok(Some(info(&id[..4], "172.17.0.2", &["IAM_ROLE=r"])))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test]
async fn a_full_listing_makes_only_the_inspections_it_runs_at_once() {
    let conn = CountingConnection::default();
    let syncer = Syncer::new(
        Arc::new(FakeRuntime::default()),
        ContainerIndex::new(),
        Arc::new(NoListener),
        SyncConfig::default(),
    );
    syncer
        .resync(&conn, &mut Unreadable::default())
        .await
        .unwrap();
    assert_eq!(syncer.index.len(), 1000);
    let most = conn.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= INSPECT_CONCURRENCY,
        "{most} inspections existed at once for 1000 containers"
    );
}

#[tokio::test]
async fn a_container_docker_cannot_describe_is_left_out_alone_and_asked_about_again() {
    let docker = FakeRuntime::default();
    let b = full_id("b");
    docker.put(info("a", "172.17.0.2", &["IAM_ROLE=ra"]));
    docker.put(info("b", "172.17.0.3", &["IAM_ROLE=rb"]));
    docker.set_unreadable(&b, true);
    let (index, _recorder, task) = start(&docker);
    eventually("the index is live", || index.is_live()).await;
    // The other container is served; the one Docker cannot describe is not, and is counted.
    assert_eq!(role_at(&index, "172.17.0.2").as_deref(), Some("ra"));
    assert_eq!(role_at(&index, "172.17.0.3"), None);
    assert_eq!(index.unreadable(), 1);
    // It is asked about again at the liveness checks, and it running undescribed is no drift:
    // the connection is kept.
    let asked = docker.inspections(&b);
    eventually("b is asked about again", || {
        docker.inspections(&b) >= asked + 3
    })
    .await;
    assert_eq!(
        docker.connects(),
        1,
        "an undescribable container ended the connection"
    );
    assert_eq!(role_at(&index, "172.17.0.3"), None);
    // Once Docker describes it, it is indexed.
    docker.set_unreadable(&b, false);
    eventually("b is indexed", || role_at(&index, "172.17.0.3").is_some()).await;
    assert_eq!(role_at(&index, "172.17.0.3").as_deref(), Some("rb"));
    assert_eq!(index.unreadable(), 0);
    assert_eq!(docker.connects(), 1);
    task.abort();
}

#[tokio::test]
async fn an_event_about_a_container_docker_cannot_describe_forgets_it() {
    let docker = FakeRuntime::default();
    let c = full_id("c");
    let (index, _recorder, task) = start(&docker);
    eventually("the index is live", || index.is_live()).await;
    docker.start(info("c", "172.17.0.4", &["IAM_ROLE=rc"]));
    eventually("c is indexed", || role_at(&index, "172.17.0.4").is_some()).await;
    // Docker changes it (say, a network connected) but cannot describe it now: its old
    // description may no longer hold, so it is no longer served; the connection is kept.
    docker.set_unreadable(&c, true);
    docker.emit(&Event::Changed(c.clone()));
    eventually("c is forgotten", || role_at(&index, "172.17.0.4").is_none()).await;
    assert_eq!(index.unreadable(), 1);
    assert_eq!(docker.connects(), 1);
    // It dies while undescribable: nothing is left to ask about.
    docker.stop(&c);
    eventually("nothing is unreadable", || index.unreadable() == 0).await;
    assert!(index.is_live());
    // A new container that starts undescribable is not served, then is once describable.
    let d = full_id("d");
    docker.set_unreadable(&d, true);
    docker.start(info("d", "172.17.0.5", &["IAM_ROLE=rd"]));
    eventually("d is noted", || index.unreadable() == 1).await;
    assert_eq!(role_at(&index, "172.17.0.5"), None);
    docker.set_unreadable(&d, false);
    eventually("d is indexed", || role_at(&index, "172.17.0.5").is_some()).await;
    assert_eq!(docker.connects(), 1);
    task.abort();
}

#[tokio::test]
async fn a_failed_connection_during_the_listing_still_ends_the_resync() {
    let docker = FakeRuntime::default();
    let syncer = Syncer::new(
        Arc::new(docker.clone()),
        ContainerIndex::new(),
        Arc::new(NoListener),
        SyncConfig::default(),
    );
    let conn = BrokenInspections;
    let mut unreadable = Unreadable::default();
    let e = syncer.resync(&conn, &mut unreadable).await.unwrap_err();
    assert!(matches!(e, SourceError::Api { .. }), "{e}");
    assert!(unreadable.is_empty());
}

/// A connection whose inspections fail as a dropped connection does.
#[derive(Debug)]
struct BrokenInspections;

impl Connection for BrokenInspections {
    fn events(&self, _: std::time::SystemTime) -> BoxStream<'static, Result<Event, SourceError>> {
        futures_util::stream::pending().boxed()
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async { Ok(vec![full_id("e")]) })
    }

    fn inspect<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>> {
        Box::pin(async {
            Err(SourceError::Api {
                call: "GET /containers/{id}/json",
                source: "connection reset".into(),
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test]
async fn a_container_undescribed_for_a_moment_is_asked_about_again_before_the_next_check() {
    // A container being created may answer an error for a moment: it is asked about again
    // after the first backoff, not a whole liveness interval later.
    let docker = FakeRuntime::default();
    let config = SyncConfig {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ping_interval: Duration::from_secs(30),
        ..SyncConfig::default()
    };
    let (index, task) =
        crate::containers::spawn(Arc::new(docker.clone()), Arc::new(NoListener), config);
    eventually("the index is live", || index.is_live()).await;
    let e = full_id("e");
    docker.set_unreadable(&e, true);
    docker.start(info("e", "172.17.0.6", &["IAM_ROLE=re"]));
    eventually("e is noted", || index.unreadable() == 1).await;
    docker.set_unreadable(&e, false);
    eventually("e is indexed long before the 30 s check", || {
        role_at(&index, "172.17.0.6").is_some()
    })
    .await;
    task.abort();
}
