//! Which destinations are guarded: the metadata service's addresses (and the container-credentials
//! endpoint's with [`FLAG_ECS`]) in every spelling that can reach them.
//!
//! Addresses are compared in network byte order, as the kernel hands them over
//! (`bpf_sock_addr.user_ip4/6`, packet bytes): a constant is converted once with `to_be`.

use metadataproxy_common::{
    ECS_IPV4, ECS_IPV6, FLAG_ECS, IMDS_IPV4, IMDS_IPV6, NAT64_WORD, V4_MAPPED_WORD,
};

/// What an IPv6 destination is to the guard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum V6 {
    /// Not guarded.
    Other,
    /// `fd00:ec2::254` (or `fd00:ec2::23` with [`FLAG_ECS`]).
    Native,
    /// `::ffff:a.b.c.d` of a guarded IPv4 address: the connection is made over IPv4.
    Mapped,
    /// Another spelling of a guarded IPv4 address (IPv4-compatible `::a.b.c.d`, NAT64
    /// `64:ff9b::a.b.c.d`): never redirected, refused.
    Alias,
}

/// Whether `ip` (network order) is a guarded IPv4 address under `flags`.
pub fn guarded_v4(ip: u32, flags: u32) -> bool {
    ip == IMDS_IPV4.to_be() || (flags & FLAG_ECS != 0 && ip == ECS_IPV4.to_be())
}

fn same(ip: &[u32; 4], host_order: &[u32; 4]) -> bool {
    ip[0] == host_order[0].to_be()
        && ip[1] == host_order[1].to_be()
        && ip[2] == host_order[2].to_be()
        && ip[3] == host_order[3].to_be()
}

/// What `ip` (four network-order words) is under `flags`.
pub fn classify_v6(ip: &[u32; 4], flags: u32) -> V6 {
    if ip[1] == 0 && (ip[0] == 0 || ip[0] == NAT64_WORD.to_be()) {
        if ip[0] == 0 && ip[2] == V4_MAPPED_WORD.to_be() {
            return if guarded_v4(ip[3], flags) {
                V6::Mapped
            } else {
                V6::Other
            };
        }
        if ip[2] == 0 && guarded_v4(ip[3], flags) {
            return V6::Alias;
        }
        return V6::Other;
    }
    if same(ip, &IMDS_IPV6) || (flags & FLAG_ECS != 0 && same(ip, &ECS_IPV6)) {
        V6::Native
    } else {
        V6::Other
    }
}
