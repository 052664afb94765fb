//! The real containerd source: containerd's gRPC API (`metadataproxy-grpc`, tonic) over its unix
//! socket. Containers are listed and read through the tasks and containers services of each
//! configured namespace; followed through the events service ([`super::events`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures_util::stream::BoxStream;
use metadataproxy_grpc::containerd::services::containers::v1::GetContainerRequest;
use metadataproxy_grpc::containerd::services::containers::v1::containers_client::ContainersClient;
use metadataproxy_grpc::containerd::services::tasks::v1::GetRequest;
use metadataproxy_grpc::containerd::services::tasks::v1::tasks_client::TasksClient;
use metadataproxy_grpc::tonic::transport::Channel;

use super::calls::{CALL_TIMEOUT, is_live, request, running_keys, unary};
use super::error::{ContainerdError, chain};
use super::{events, spec};
use super::{key, split_key};
use crate::containers::{Connection, ContainerInfo, ContainerSource, Event, SourceError};
use futures_util::future::BoxFuture;

/// containerd at `CONTAINERD_ADDRESS`, for the namespaces of `CONTAINERD_NAMESPACES`.
#[derive(Debug, Clone)]
pub struct ContainerdApi {
    address: PathBuf,
    namespaces: Arc<[String]>,
}

impl ContainerdApi {
    /// containerd at the socket `address`, following `namespaces`.
    pub fn new(address: PathBuf, namespaces: &[String]) -> Self {
        Self {
            address,
            namespaces: namespaces.into(),
        }
    }
}

impl ContainerSource for ContainerdApi {
    fn describe(&self) -> String {
        format!(
            "unix://{} (namespaces {})",
            self.address.display(),
            self.namespaces.join(",")
        )
    }

    fn runtime(&self) -> &'static str {
        "containerd"
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, SourceError>> {
        Box::pin(async move {
            let address = self.address.display().to_string();
            let channel =
                tokio::time::timeout(CALL_TIMEOUT, metadataproxy_grpc::connect(&self.address))
                    .await
                    .map_err(|_| ContainerdError::Timeout {
                        call: "connect",
                        namespace: "*".into(),
                        secs: CALL_TIMEOUT.as_secs(),
                    })?
                    .map_err(|e| ContainerdError::Connect {
                        address,
                        reason: chain(&e),
                    })?;
            Ok(Box::new(ContainerdConnection {
                channel,
                namespaces: Arc::clone(&self.namespaces),
                listed: Arc::default(),
            }) as Box<dyn Connection>)
        })
    }
}

/// One gRPC channel to containerd.
#[derive(Debug)]
struct ContainerdConnection {
    channel: Channel,
    namespaces: Arc<[String]>,
    /// The keys of the last listing, for the catch-up after subscribing.
    listed: Arc<Mutex<HashSet<String>>>,
}

impl ContainerdConnection {
    /// Reads one container and, for a Kubernetes container, its pod's annotations.
    async fn read(&self, ns: &str, id: &str) -> Result<Option<ContainerInfo>, ContainerdError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let Some(found) = unary(
            "Containers.Get",
            ns,
            containers.get(request(ns, GetContainerRequest { id: id.to_owned() })),
        )
        .await?
        .and_then(|r| r.container) else {
            return Ok(None);
        };
        let facts = match found.spec.as_ref().map(|s| spec::spec_facts(&s.value)) {
            Some(Ok(facts)) => facts,
            Some(Err(e)) => {
                tracing::warn!(namespace = ns, id, error = %e, "containerd container has an unreadable OCI spec: it is not identified");
                return Ok(None);
            }
            None => spec::SpecFacts::default(),
        };
        if spec::is_sandbox(&found.labels, &facts) {
            // A pod's pause container: nothing in it calls, its pod's containers are what counts.
            return Ok(None);
        }
        let mut tasks = TasksClient::new(self.channel.clone());
        let running = unary(
            "Tasks.Get",
            ns,
            tasks.get(request(
                ns,
                GetRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
            )),
        )
        .await?
        .and_then(|r| r.process)
        .is_some_and(|p| is_live(p.status()));
        let (pod_annotations, pod_labels) = match spec::sandbox_id(&facts) {
            Some(sandbox) => self.pod(ns, id, sandbox).await?,
            None => (HashMap::new(), HashMap::new()),
        };
        Ok(Some(ContainerInfo {
            id: key(ns, id),
            name: spec::display_name(ns, id, &facts),
            running,
            image: found.image,
            env: facts.env,
            labels: found.labels,
            cgroup: facts.cgroup,
            pod_annotations,
            pod_labels,
            ..ContainerInfo::default()
        }))
    }

    /// The annotations and labels of the pod whose sandbox container is `sandbox` (the CRI
    /// plugin gives the sandbox record the pod's labels; kubelet gives a pod's containers only
    /// its own `io.kubernetes.*` labels).
    async fn pod(
        &self,
        ns: &str,
        id: &str,
        sandbox: &str,
    ) -> Result<(HashMap<String, String>, HashMap<String, String>), ContainerdError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let found = unary(
            "Containers.Get",
            ns,
            containers.get(request(
                ns,
                GetContainerRequest {
                    id: sandbox.to_owned(),
                },
            )),
        )
        .await?
        .and_then(|r| r.container);
        let labels: HashMap<String, String> = found
            .as_ref()
            .map(|s| {
                s.labels
                    .iter()
                    .filter(|(k, _)| !k.starts_with("io.cri-containerd."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let metadata = found
            .as_ref()
            .and_then(|s| s.extensions.get(spec::SANDBOX_METADATA_EXTENSION));
        let Some(metadata) = metadata else {
            tracing::warn!(
                namespace = ns,
                id,
                sandbox,
                "pod sandbox of a containerd container not found or without CRI metadata: the pod's annotations are not used"
            );
            return Ok((HashMap::new(), labels));
        };
        let annotations = spec::pod_annotations(&metadata.value).unwrap_or_else(|e| {
            tracing::warn!(namespace = ns, id, sandbox, error = %e, "pod sandbox metadata unreadable: the pod's annotations are not used");
            HashMap::new()
        });
        Ok((annotations, labels))
    }
}

impl Connection for ContainerdConnection {
    fn events(&self, _since: SystemTime) -> BoxStream<'static, Result<Event, SourceError>> {
        events::follow(
            self.channel.clone(),
            Arc::clone(&self.namespaces),
            Arc::clone(&self.listed),
        )
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            let keys = running_keys(&self.channel, &self.namespaces).await?;
            self.listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone_from(&keys);
            Ok(keys.into_iter().collect())
        })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>> {
        Box::pin(async move {
            let key = id;
            let Some((ns, id)) = split_key(key) else {
                return Ok(None);
            };
            self.read(ns, id).await.map_err(|e| e.describing(key))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>> {
        // containerd has no ping: listing the tasks is the cheapest call every version answers.
        // Not compared with the index: its listing keeps containers the index leaves out.
        Box::pin(async move {
            running_keys(&self.channel, &self.namespaces).await?;
            Ok(None)
        })
    }
}
