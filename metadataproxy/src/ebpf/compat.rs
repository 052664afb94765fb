//! Which kernels the programs load on, and which variant of the connect programs this daemon
//! loads: the host-pid one when it runs in the initial pid namespace (Linux 5.8+), the pid
//! namespace one otherwise (Linux 6.10+, the first kernel that lets cgroup programs call
//! `bpf_get_ns_current_pid_tgid`).
//!
//! The minimums come from every helper, context field and map type the programs use, checked
//! against each kernel's sources (`net/core/filter.c`, `kernel/bpf/cgroup.c`): the table in this
//! module's tests lists them and fails when the programs call a helper it does not know.

use metadataproxy_common::{INIT_PID_NS_INO, programs};

/// The oldest kernel the host-pid programs load on: `CAP_BPF` and every helper they call from
/// their program types (checked in 5.8's sources), link-based cgroup attachments (5.7).
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// The oldest kernel the pid-namespace connect programs load on: cgroup programs may call
/// `bpf_get_ns_current_pid_tgid` since Linux 6.10 (`bpf_base_func_proto`).
pub const PIDNS_MIN_KERNEL: (u32, u32) = (6, 10);
/// Where the kernel's release is.
pub const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// How the connect programs recognise the daemon's own process (never redirected, never dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// By its host pid: the daemon runs in the initial pid namespace (systemd, `--pid host`,
    /// `hostPID: true`).
    Host,
    /// By its pid in the pid namespace it runs in (a container without `--pid host`).
    Namespace,
}

impl PidMode {
    /// The mode for a daemon whose pid namespace has inode `pidns_ino`.
    pub fn of(pidns_ino: u64) -> Self {
        if pidns_ino == INIT_PID_NS_INO {
            Self::Host
        } else {
            Self::Namespace
        }
    }

    /// The connect4 and connect6 programs of this mode, each with the name its links are pinned
    /// under (the same for both modes).
    pub fn connect_programs(self) -> [(&'static str, &'static str); 2] {
        match self {
            Self::Host => [
                (programs::CONNECT4, programs::CONNECT4),
                (programs::CONNECT6, programs::CONNECT6),
            ],
            Self::Namespace => [
                (programs::CONNECT4, programs::CONNECT4_PIDNS),
                (programs::CONNECT6, programs::CONNECT6_PIDNS),
            ],
        }
    }

    /// The oldest kernel this mode's programs load on.
    pub fn min_kernel(self) -> (u32, u32) {
        match self {
            Self::Host => MIN_KERNEL,
            Self::Namespace => PIDNS_MIN_KERNEL,
        }
    }

    /// What this mode needs from the kernel, for an error or a check that failed.
    pub fn needs(self) -> &'static str {
        match self {
            Self::Host => "the programs need Linux 5.8 or later",
            Self::Namespace => {
                "the daemon runs in a pid namespace of its own, where recognising its own connections needs Linux 6.10 or later (cgroup programs may call bpf_get_ns_current_pid_tgid since 6.10); on an older kernel run it in the host's pid namespace (systemd, `docker run --pid host`, `hostPID: true`)"
            }
        }
    }

    /// How it is described in the log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Host => "by its host pid (it runs in the initial pid namespace; Linux 5.8+)",
            Self::Namespace => {
                "by its pid in its own pid namespace (it runs in a pid namespace of its own; Linux 6.10+)"
            }
        }
    }
}

/// `(major, minor)` of a kernel release such as `6.8.0-1021-aws` or `5.10.228-219.884.amzn2.x86_64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+', '_']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// This kernel's release (`uname -r`), or `unknown`.
pub fn release() -> String {
    std::fs::read_to_string(OSRELEASE)
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_of_the_kernels_fleets_run() {
        for (release, want) in [
            ("6.1.119-129.201.amzn2023.x86_64", (6, 1)),
            ("6.8.0-1021-aws", (6, 8)),
            ("5.15.0-1072-aws", (5, 15)),
            ("6.10", (6, 10)),
            ("6.18.44-fc-v1252\n", (6, 18)),
            ("4.14.355-275.582.amzn2.x86_64", (4, 14)),
        ] {
            assert_eq!(version(release), Some(want), "{release}");
        }
        for bad in ["", "linux", "6", "6.x.1"] {
            assert_eq!(version(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_host_pid_programs_only_in_the_initial_pid_namespace() {
        assert_eq!(PidMode::of(INIT_PID_NS_INO), PidMode::Host);
        assert_eq!(PidMode::of(4_026_532_571), PidMode::Namespace);
        assert_eq!(PidMode::of(0), PidMode::Namespace);
        // Whatever the variant, its links are pinned under the same names.
        for mode in [PidMode::Host, PidMode::Namespace] {
            let pins = mode.connect_programs().map(|(pin, _)| pin);
            assert_eq!(pins, [programs::CONNECT4, programs::CONNECT6]);
        }
        assert_eq!(
            PidMode::Namespace.connect_programs().map(|(_, p)| p),
            [programs::CONNECT4_PIDNS, programs::CONNECT6_PIDNS]
        );
        assert!(PidMode::Host.min_kernel() < PidMode::Namespace.min_kernel());
    }

    /// The oldest kernel known to let each program type call each helper the programs call:
    /// read in the program types' `*_func_proto` of the 5.8, 5.10, 6.0, 6.1 and 6.8 sources
    /// (every entry up to 5.8 is in 5.8's), and for `get_ns_current_pid_tgid` the commit that
    /// moved it into `bpf_base_func_proto` (eb166e522c77, 6.10; 6.8's cgroup programs lack it).
    /// `(helper id, name, program type or "*" for all three, kernel)`.
    #[cfg(metadataproxy_ebpf_object)]
    const HELPERS: &[(i32, &str, &str, (u32, u32))] = &[
        (1, "map_lookup_elem", "*", (5, 8)),
        (2, "map_update_elem", "*", (5, 8)),
        (3, "map_delete_elem", "*", (5, 8)),
        (5, "ktime_get_ns", "*", (5, 8)),
        (107, "sk_storage_get", "*", (5, 8)),
        (14, "get_current_pid_tgid", SOCK_ADDR, (5, 8)),
        (80, "get_current_cgroup_id", SOCK_ADDR, (5, 8)),
        (122, "get_netns_cookie", SOCK_ADDR, (5, 8)),
        (120, "get_ns_current_pid_tgid", SOCK_ADDR, (6, 10)),
        (59, "sock_ops_cb_flags_set", SOCK_OPS, (5, 8)),
        (26, "skb_load_bytes", CGROUP_SKB, (5, 8)),
        (79, "skb_cgroup_id", CGROUP_SKB, (5, 8)),
        (95, "sk_fullsock", CGROUP_SKB, (5, 8)),
    ];
    #[cfg(metadataproxy_ebpf_object)]
    const SOCK_ADDR: &str = "cgroup_sock_addr";
    #[cfg(metadataproxy_ebpf_object)]
    const SOCK_OPS: &str = "sock_ops";
    #[cfg(metadataproxy_ebpf_object)]
    const CGROUP_SKB: &str = "cgroup_skb";

    /// The program type of a program of the object.
    #[cfg(metadataproxy_ebpf_object)]
    fn kind(section: &aya_obj::ProgramSection) -> &'static str {
        match section {
            aya_obj::ProgramSection::CgroupSockAddr { .. } => SOCK_ADDR,
            aya_obj::ProgramSection::SockOps => SOCK_OPS,
            aya_obj::ProgramSection::CgroupSkb { .. } => CGROUP_SKB,
            other => panic!("a program of a type the table does not know: {other:?}"),
        }
    }

    /// `BPF_JMP | BPF_CALL`, with `src_reg` 0: a helper call (1 is a call to a function of the
    /// object, 2 a kfunc).
    #[cfg(metadataproxy_ebpf_object)]
    const CALL: u8 = 0x85;

    /// The helpers program `name` of `object` (its calls linked) calls.
    #[cfg(metadataproxy_ebpf_object)]
    fn helpers_of(object: &aya_obj::Object, name: &str) -> (&'static str, Vec<i32>) {
        let program = object
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the object"));
        let function = &object.functions[&program.function_key()];
        let mut calls: Vec<i32> = function
            .instructions
            .iter()
            .filter(|i| i.code == CALL)
            .inspect(|i| assert_ne!(i.src_reg(), 2, "{name} calls a kfunc"))
            .filter(|i| i.src_reg() == 0)
            .map(|i| i.imm)
            .collect();
        calls.sort_unstable();
        calls.dedup();
        (kind(&program.section), calls)
    }

    /// The oldest kernel program `name` loads on, from its helpers.
    #[cfg(metadataproxy_ebpf_object)]
    fn needs(object: &aya_obj::Object, name: &str) -> (u32, u32) {
        let (section, calls) = helpers_of(object, name);
        calls
            .iter()
            .map(|id| {
                HELPERS
                    .iter()
                    .find(|(h, _, kind, _)| h == id && (*kind == "*" || *kind == section))
                    .unwrap_or_else(|| {
                        panic!("{name} ({section}) calls helper {id}, which the table does not list for its program type: look up since when that type may call it, and add it")
                    })
                    .3
            })
            .max()
            .unwrap_or((0, 0))
    }

    /// The built object's programs need no newer kernel than the documented minimums; a helper
    /// the table does not list fails here until someone has looked it up.
    #[cfg(metadataproxy_ebpf_object)]
    #[test]
    fn the_programs_load_on_the_documented_kernels() {
        let mut object = aya_obj::Object::parse(super::super::load::OBJECT).expect("the object");
        // Each program with the functions it calls appended, as the loader links them: a helper
        // called from a callee (or from an identical function the compiler merged) counts.
        let text_sections = object
            .functions
            .keys()
            .map(|(section, _)| *section)
            .collect();
        object
            .relocate_calls(&text_sections)
            .expect("linking calls");
        for name in [programs::SOCK_OPS, programs::EGRESS] {
            assert!(needs(&object, name) <= MIN_KERNEL, "{name}");
        }
        for (_, name) in PidMode::Host.connect_programs() {
            assert_eq!(needs(&object, name), MIN_KERNEL, "{name}");
        }
        for (_, name) in PidMode::Namespace.connect_programs() {
            assert_eq!(needs(&object, name), PIDNS_MIN_KERNEL, "{name}");
        }
    }
}
