//! containerd: containers run by containerd itself (`ctr`, nerdctl, its API) and Kubernetes pods
//! (containerd's CRI plugin), identified by their cgroup, their roles from their OCI spec's
//! environment, their labels or their pod's annotation `iam.amazonaws.com/role`.
//!
//! The containers of the followed namespaces (`CONTAINERD_NAMESPACES`) are kept in the same kind
//! of index as Docker's ([`crate::containers::ContainerIndex`], keys `namespace/id`), by the same
//! synchroniser: a full listing on every (re)connection, then containerd's event stream — never a
//! containerd call per request; a container whose task exits is forgotten at once, and its role is
//! prefetched when it starts.

mod api;
mod calls;
mod error;
mod events;
mod identify;
pub mod spec;

pub use api::ContainerdApi;
pub use error::ContainerdError;
pub use identify::ContainerdCgroup;

/// The index key of container `id` in containerd namespace `namespace`.
pub fn key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

/// The namespace and id of an index key (namespaces never contain `/`).
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
        .filter(|(ns, id)| !ns.is_empty() && !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(key("k8s.io", "abc"), "k8s.io/abc");
        assert_eq!(split_key("k8s.io/abc"), Some(("k8s.io", "abc")));
        assert_eq!(split_key("default/a/b"), Some(("default", "a/b")));
        assert_eq!(split_key("nokey"), None);
        assert_eq!(split_key("/x"), None);
    }
}
