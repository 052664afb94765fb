//! Following containerd's events service: `/tasks/start`, `/tasks/exit` of a container's init
//! process and `/containers/delete` in the followed namespaces, as the index's events, plus a
//! catch-up listing shortly after subscribing (containerd's events cannot be replayed).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use metadataproxy_grpc::containerd::events::{ContainerDelete, TaskExit, TaskStart};
use metadataproxy_grpc::containerd::services::events::v1::SubscribeRequest;
use metadataproxy_grpc::containerd::services::events::v1::events_client::EventsClient;
use metadataproxy_grpc::containerd::types::Envelope;
use metadataproxy_grpc::tonic::transport::Channel;
use prost::Message as _;
use tokio::sync::mpsc;

use super::calls::running_keys;
use super::error::ContainerdError;
use super::key;
use crate::containers::{Event, SourceError};

/// containerd's events cannot be replayed: this long after subscribing, the running tasks are
/// listed again and every difference from the first listing is looked at again, so a container
/// that started or stopped between listing and subscribing is not missed.
const CATCH_UP: Duration = Duration::from_secs(1);
/// The event topics the index acts on.
const TOPICS: [&str; 3] = ["/tasks/start", "/tasks/exit", "/containers/delete"];

/// The index's view of one event envelope; `None` for events it does not act on.
pub(super) fn event(envelope: &Envelope, namespaces: &[String]) -> Option<Event> {
    let ns = envelope.namespace.as_str();
    if !namespaces.iter().any(|n| n == ns) {
        return None;
    }
    let body = envelope.event.as_ref()?.value.as_slice();
    let decoded = match envelope.topic.as_str() {
        "/tasks/start" => {
            TaskStart::decode(body).map(|e| Some(Event::Start(key(ns, &e.container_id))))
        }
        // Also sent for `exec` processes: only the init process's exit ends the container.
        "/tasks/exit" => TaskExit::decode(body).map(|e| {
            (e.id.is_empty() || e.id == e.container_id)
                .then(|| Event::Die(key(ns, &e.container_id)))
        }),
        "/containers/delete" => {
            ContainerDelete::decode(body).map(|e| Some(Event::Destroy(key(ns, &e.id))))
        }
        _ => return None,
    };
    match decoded {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(topic = %envelope.topic, namespace = ns, error = %e, "undecodable containerd event ignored");
            None
        }
    }
}

/// The index's events from `channel`: the subscription, and after [`CATCH_UP`] every key whose
/// running state differs from the listing in `listed` (the index inspects those again). The
/// stream ends with the error that ended the subscription.
pub(super) fn follow(
    channel: Channel,
    namespaces: Arc<[String]>,
    listed: Arc<Mutex<HashSet<String>>>,
) -> BoxStream<'static, Result<Event, SourceError>> {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Event, SourceError>>();
    let mut client = EventsClient::new(channel.clone());
    let (events, subscribed_namespaces) = (tx.clone(), Arc::clone(&namespaces));
    tokio::spawn(async move {
        let namespaces = subscribed_namespaces;
        let filters = TOPICS.iter().map(|t| format!("topic==\"{t}\"")).collect();
        let subscribed = tokio::select! {
            r = client.subscribe(SubscribeRequest { filters }) => r,
            () = events.closed() => return,
        };
        let mut stream = match subscribed {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = events.send(Err(
                    ContainerdError::api("Events.Subscribe", "*", &status).into()
                ));
                return;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = events.closed() => return,
            };
            let item = match message {
                Ok(Some(envelope)) => match event(&envelope, &namespaces) {
                    Some(e) => Ok(e),
                    None => continue,
                },
                Ok(None) => Err(ContainerdError::StreamEnded),
                Err(status) => Err(ContainerdError::api("Events.Subscribe", "*", &status)),
            };
            let last = item.is_err();
            if events.send(item.map_err(SourceError::from)).is_err() || last {
                return;
            }
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(CATCH_UP) => {}
            () = tx.closed() => return,
        }
        let item = running_keys(&channel, &namespaces).await.map(|now| {
            let before = listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            now.symmetric_difference(&before)
                .cloned()
                .collect::<Vec<_>>()
        });
        match item {
            Ok(changed) => {
                for k in changed {
                    let _ = tx.send(Ok(Event::Changed(k)));
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(ns: &str, topic: &str, body: Vec<u8>) -> Envelope {
        let mut any = Envelope::default().event.unwrap_or_default();
        any.value = body;
        Envelope {
            timestamp: None,
            namespace: ns.into(),
            topic: topic.into(),
            event: Some(any),
        }
    }

    #[test]
    fn events_are_filtered_by_namespace_and_mapped() {
        let ns = ["k8s.io".to_owned(), "default".to_owned()];
        let start = TaskStart {
            container_id: "web".into(),
            pid: 7,
        }
        .encode_to_vec();
        assert_eq!(
            event(&envelope("default", "/tasks/start", start.clone()), &ns),
            Some(Event::Start("default/web".into()))
        );
        assert_eq!(
            event(&envelope("moby", "/tasks/start", start), &ns),
            None,
            "Docker's namespace is not followed"
        );
        let exit = |id: &str| {
            TaskExit {
                container_id: "web".into(),
                id: id.into(),
                ..TaskExit::default()
            }
            .encode_to_vec()
        };
        assert_eq!(
            event(&envelope("k8s.io", "/tasks/exit", exit("web")), &ns),
            Some(Event::Die("k8s.io/web".into()))
        );
        assert_eq!(
            event(&envelope("k8s.io", "/tasks/exit", exit("exec-1")), &ns),
            None,
            "an exec process ending is not the container's death"
        );
        let delete = ContainerDelete { id: "web".into() }.encode_to_vec();
        assert_eq!(
            event(&envelope("k8s.io", "/containers/delete", delete), &ns),
            Some(Event::Destroy("k8s.io/web".into()))
        );
        assert_eq!(
            event(&envelope("k8s.io", "/images/update", vec![]), &ns),
            None
        );
        assert_eq!(
            event(&envelope("k8s.io", "/tasks/start", vec![0xff, 0xff]), &ns),
            None,
            "garbage is ignored, not a panic"
        );
    }
}
