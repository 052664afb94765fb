//! Docker as a container source: the Engine API behind [`DockerApi`] (events, listing,
//! inspection) feeding the runtime-neutral index of `containers/`, and the identification of
//! callers against it — by the kernel-attested cgroup (`docker-<id>.scope`, `/docker/<id>`), by
//! address, and by reverse DNS, as Lyft's proxy did.

mod api;
pub mod cgroup;
mod identify;
mod listing;

pub use api::DockerApi;
pub use identify::{
    CallerContainer, DockerCgroup, DockerIp, REVERSE_LOOKUP_TIMEOUT, ReverseDns, ReverseLookup,
    SystemResolver, match_key,
};
