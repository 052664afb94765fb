//! Why talking to containerd failed.

use metadataproxy_grpc::tonic;
use thiserror::Error;

/// Why talking to containerd failed.
#[derive(Debug, Error)]
pub enum ContainerdError {
    /// containerd cannot be reached at `CONTAINERD_ADDRESS`.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The socket.
        address: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// A containerd API call failed.
    #[error("{call} (namespace {namespace}) failed: {code:?}: {message}")]
    Api {
        /// Which call.
        call: &'static str,
        /// The containerd namespace it was made in (`*` for all).
        namespace: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// A call did not answer in time.
    #[error("{call} (namespace {namespace}) did not answer within {secs} s")]
    Timeout {
        /// Which call.
        call: &'static str,
        /// The containerd namespace it was made in.
        namespace: String,
        /// The time allowed.
        secs: u64,
    },
    /// The event stream ended: containerd stopped or the connection dropped.
    #[error("the event stream ended (containerd stopped or the connection dropped)")]
    StreamEnded,
}

impl ContainerdError {
    /// A failed call.
    pub(super) fn api(call: &'static str, namespace: &str, status: &tonic::Status) -> Self {
        Self::Api {
            call,
            namespace: namespace.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// An error and its causes, `: `-separated (tonic's transport error says little on its own).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl ContainerdError {
    /// The error of describing container `id` (its key): about that container alone when
    /// containerd answered with a status of its own (`Internal`, `FailedPrecondition`, …), the
    /// connection's when the transport failed or gave up (`Unavailable`, `Unknown`, `Cancelled`,
    /// `DeadlineExceeded`, a timeout).
    pub(super) fn describing(self, id: &str) -> crate::containers::SourceError {
        use tonic::Code;
        match &self {
            Self::Api { call, code, .. }
                if !matches!(
                    code,
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                crate::containers::SourceError::Unreadable {
                    call,
                    id: id.to_owned(),
                    source: Box::new(self),
                }
            }
            _ => self.into(),
        }
    }
}

impl From<ContainerdError> for crate::containers::SourceError {
    fn from(e: ContainerdError) -> Self {
        Self::Runtime(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_about_one_container_leaves_the_connection_alone() {
        let api = |code| ContainerdError::Api {
            call: "Tasks.Get",
            namespace: "k8s.io".into(),
            code,
            message: "boom".into(),
        };
        let key = "k8s.io/0123456789abcdef";
        for code in [
            tonic::Code::Internal,
            tonic::Code::FailedPrecondition,
            tonic::Code::DataLoss,
        ] {
            let e = api(code).describing(key);
            assert!(e.is_about_one_container(), "{code:?}: {e}");
            assert!(e.to_string().contains("Tasks.Get"), "{e}");
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Unknown,
            tonic::Code::Cancelled,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(
                !api(code).describing(key).is_about_one_container(),
                "{code:?}"
            );
        }
        let timeout = ContainerdError::Timeout {
            call: "Containers.Get",
            namespace: "k8s.io".into(),
            secs: 10,
        };
        assert!(!timeout.describing(key).is_about_one_container());
    }
}
