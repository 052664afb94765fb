//! One call to containerd's API: in a namespace, bounded by [`CALL_TIMEOUT`], `NotFound` as
//! `None`; and the listing of live tasks both the source and its event stream use.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use metadataproxy_grpc::containerd::services::tasks::v1::ListTasksRequest;
use metadataproxy_grpc::containerd::services::tasks::v1::tasks_client::TasksClient;
use metadataproxy_grpc::containerd::v1::types::Status;
use metadataproxy_grpc::tonic;
use metadataproxy_grpc::tonic::transport::Channel;

use super::error::ContainerdError;
use super::key;

/// How long one API call may take (the event stream itself is not bounded).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A request in containerd namespace `namespace`.
pub(super) fn request<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    // Namespaces are validated at start-up (letters, digits, `.`, `_`, `-`): always ASCII.
    if let Ok(value) = namespace.parse() {
        req.metadata_mut().insert("containerd-namespace", value);
    }
    req
}

/// Runs a unary call with [`CALL_TIMEOUT`]; `NotFound` is `Ok(None)`.
pub(super) async fn unary<T>(
    call: &'static str,
    namespace: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Option<T>, ContainerdError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => Err(ContainerdError::Timeout {
            call,
            namespace: namespace.to_owned(),
            secs: CALL_TIMEOUT.as_secs(),
        }),
        Ok(Ok(response)) => Ok(Some(response.into_inner())),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Ok(Err(status)) => Err(ContainerdError::api(call, namespace, &status)),
    }
}

/// Whether a task in this state runs processes that may call.
pub(super) fn is_live(status: Status) -> bool {
    matches!(status, Status::Running | Status::Paused | Status::Pausing)
}

/// The keys of every live task in `namespaces`.
pub(super) async fn running_keys(
    channel: &Channel,
    namespaces: &[String],
) -> Result<HashSet<String>, ContainerdError> {
    let mut keys = HashSet::new();
    for ns in namespaces {
        let mut tasks = TasksClient::new(channel.clone());
        let list = unary(
            "Tasks.List",
            ns,
            tasks.list(request(ns, ListTasksRequest::default())),
        )
        .await?
        .unwrap_or_default();
        for task in list.tasks {
            if is_live(task.status()) {
                let id = if task.container_id.is_empty() {
                    &task.id
                } else {
                    &task.container_id
                };
                keys.insert(key(ns, id));
            }
        }
    }
    Ok(keys)
}
