//! cgroup v2 as the rest of the daemon sees it: what a path's segments name ([`container_of`],
//! [`is_within`], …), the tree below the cgroup2 mount ([`tree`]), and cgroup id → path
//! ([`CgroupPaths`]). It imports nothing else of the daemon: the kernel side, identification and
//! the container layer all build on it.

mod path;
mod resolve;
mod tree;

pub use path::{
    ContainerRef, ancestors, container_of, is_container_path, is_within, named_ids, v2_path,
};
pub use resolve::CgroupPaths;
pub use tree::tree;
