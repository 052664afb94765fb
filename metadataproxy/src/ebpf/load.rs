//! Loading, configuring, attaching and pinning the programs; taking over a predecessor's pins.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use metadataproxy_common::{
    FLAG_ECS, FLAG_IPV4, FLAG_IPV6, FLAG_OWN_NETNS_LOOPBACK, Settings, maps, programs,
};

use super::compat::PidMode;
use super::exempt::{HostCgroups, RedirectPolicy};
use super::{ConnTable, EbpfError, Exempt, Host, Target};
use crate::config::{EbpfConfig, OnExit};

/// The eBPF object built by `cargo xtask build-ebpf`, when it existed at build time.
#[cfg(metadataproxy_ebpf_object)]
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metadataproxy-ebpf.o"));
#[cfg(not(metadataproxy_ebpf_object))]
pub(super) static OBJECT: &[u8] = &[];

/// Prefix of link pin names: `link-<program>-<cgroup id>`.
const LINK_PREFIX: &str = "link-";

/// What [`Redirect::start`] sets up.
#[derive(Debug)]
pub struct Started {
    /// The attached programs.
    pub redirect: Redirect,
    /// The connection records, for `accept()`.
    pub table: ConnTable,
    /// The host exemptions (`EBPF_REDIRECT_HOST=false`), to keep up to date.
    pub exempt: Exempt,
    /// The guard's counters.
    pub guard: super::guard::GuardStats,
}

/// The attached redirect. Dropping it leaves the pins (and so the redirect) in place; call
/// [`Redirect::shutdown`] on a clean exit to apply `EBPF_ON_EXIT`.
#[derive(Debug)]
pub struct Redirect {
    /// Keeps the programs and maps of this process loaded.
    _ebpf: Ebpf,
    /// Our pinned links.
    links: Vec<PinnedLink>,
    pin_dir: PathBuf,
    on_exit: OnExit,
}

/// What the programs need to know about the daemon's own process.
#[derive(Debug, Clone, Copy)]
pub struct Daemon {
    /// Its pid (tgid) in its own pid namespace.
    pub tgid: u32,
    /// `(device, inode)` of that pid namespace.
    pub pidns: (u64, u64),
}

impl Daemon {
    /// This process.
    pub fn this() -> Result<Self, EbpfError> {
        let pidns = super::netns::own_pidns().map_err(|source| EbpfError::Io {
            path: super::netns::OWN_PIDNS.into(),
            source,
        })?;
        Ok(Self {
            tgid: std::process::id(),
            pidns,
        })
    }

    /// How the connect programs recognise it.
    pub fn pid_mode(self) -> PidMode {
        PidMode::of(self.pidns.1)
    }
}

fn words(ip: std::net::Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn settings(target: &Target, daemon: Daemon, own_netns: Option<u64>) -> Settings {
    let (pidns_dev, pidns_ino) = daemon.pidns;
    let mut s = Settings {
        pidns_dev,
        pidns_ino,
        target4: u32::from_ne_bytes(target.v4.ip().octets()),
        port4: target.v4.port().to_be(),
        daemon_tgid: daemon.tgid,
        flags: FLAG_IPV4,
        ..Settings::default()
    };
    // Without our namespace's cookie a loopback record could not be believed (see `judge`).
    if let Some(cookie) = own_netns.filter(|_| target.own_netns_loopback) {
        s.own_netns = cookie;
        s.flags |= FLAG_OWN_NETNS_LOOPBACK;
    }
    if let Some(v6) = target.v6 {
        s.target6 = words(*v6.ip());
        s.port6 = v6.port().to_be();
        s.flags |= FLAG_IPV6;
    }
    if target.ecs {
        s.flags |= FLAG_ECS;
    }
    s
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> EbpfError {
    move |source| EbpfError::Program { name, source }
}

/// The kernel refused to load `name`, a program of (or needed by) `mode`.
fn refused(
    name: &'static str,
    mode: PidMode,
) -> impl FnOnce(aya::programs::ProgramError) -> EbpfError {
    move |source| EbpfError::Refused {
        name,
        release: super::compat::release(),
        needs: mode.needs(),
        source: Box::new(source),
    }
}

fn pin_err(path: &Path) -> impl Fn(String) -> EbpfError + '_ {
    move |reason| EbpfError::Pin {
        path: path.to_owned(),
        reason,
    }
}

impl Redirect {
    /// Loads the programs against the pinned maps (created on first start), points them at
    /// `target`, brings the host exemptions in line with `EBPF_REDIRECT_HOST` (classifying with
    /// `policy`, see [`Exempt::new`]), attaches the programs to every configured cgroup and pins
    /// the links over any older ones.
    pub fn start(
        config: &EbpfConfig,
        host: &Host,
        target: &Target,
        policy: Box<dyn RedirectPolicy>,
        listening_since: Duration,
    ) -> Result<Started, EbpfError> {
        let object = match &config.object {
            Some(path) => std::fs::read(path).map_err(|source| EbpfError::Io {
                path: path.clone(),
                source,
            })?,
            None if OBJECT.is_empty() => return Err(EbpfError::NoObject),
            None => OBJECT.to_vec(),
        };
        super::pins::prepare_dir(&config.pin_dir)?;
        // A predecessor's maps are reused only if they have the shape our programs expect.
        let shapes = super::pins::expected(&object, config.map_size)?;
        for (map, reason) in super::pins::retire_mismatched(&config.pin_dir, &shapes)? {
            tracing::warn!(map = %map, reason = %reason, "replacing a pinned map of another shape (an upgrade or a new EBPF_MAP_SIZE); the predecessor's redirect holds until ours is attached");
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&config.pin_dir)
            .map_max_entries(maps::CONN4, config.map_size)
            .map_max_entries(maps::CONN6, config.map_size)
            .map_max_entries(maps::EXEMPT, config.map_size)
            .load(&object)?;

        let own_netns = super::netns::own_netns_cookie()
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot learn this daemon's network namespace cookie (SO_NETNS_COOKIE): redirected connections to a loopback target will be refused, and callers in this namespace go to the target, not to loopback");
            })
            .ok();
        // Settings first: a predecessor's programs share this map and follow it at once.
        let daemon = Daemon::this()?;
        let map = ebpf
            .map_mut(maps::SETTINGS)
            .ok_or(aya::maps::MapError::InvalidName {
                name: maps::SETTINGS.to_owned(),
            })
            .map_err(map_err(maps::SETTINGS))?;
        let mut settings_map: Array<&mut MapData, Settings> =
            Array::try_from(map).map_err(map_err(maps::SETTINGS))?;
        settings_map
            .set(0, settings(target, daemon, own_netns), 0)
            .map_err(map_err(maps::SETTINGS))?;
        let table = ConnTable::new(
            take_hash(&mut ebpf, maps::CONN4)?,
            take_hash(&mut ebpf, maps::CONN6)?,
            own_netns,
        );
        let guard = super::guard::GuardStats::take(&mut ebpf)?;
        let stale = table.clear_before(listening_since);
        if stale > 0 {
            tracing::info!(
                entries = stale,
                "dropped connection records nobody accepted while no daemon ran"
            );
        }

        // Exemptions before the links: a first start attaches with the host cgroups already out.
        let exempt = exempt(&mut ebpf, config, host, policy)?;

        // Load (verify) every program before attaching any, so a refused program leaves no
        // half-installed redirect behind. The connect programs are the variant that recognises
        // this daemon where it runs (see `compat`).
        let mode = daemon.pid_mode();
        for (_, name) in mode.connect_programs() {
            let loaded = program::<CgroupSockAddr>(&mut ebpf, name)?.load();
            loaded.map_err(refused(name, mode))?;
        }
        let loaded = program::<SockOps>(&mut ebpf, programs::SOCK_OPS)?.load();
        loaded.map_err(refused(programs::SOCK_OPS, PidMode::Host))?;
        let loaded = program::<CgroupSkb>(&mut ebpf, programs::EGRESS)?.load();
        loaded.map_err(refused(programs::EGRESS, PidMode::Host))?;
        tracing::info!(
            kernel = %super::compat::release(),
            "the connect programs recognise this daemon's own connections {}",
            mode.describe()
        );

        let mut names = Vec::new();
        let links = attach_all(&mut ebpf, config, host, mode, &mut names)?;
        remove_stale_links(&config.pin_dir, &names);
        // Maps an older version pinned and ours no longer use (its programs are detached now).
        for map in super::pins::remove_unknown_maps(&config.pin_dir, &shapes) {
            tracing::info!(map = %map, "removed the pin of a map this version no longer uses");
        }
        Ok(Started {
            redirect: Self {
                _ebpf: ebpf,
                links,
                pin_dir: config.pin_dir.clone(),
                on_exit: config.on_exit,
            },
            table,
            exempt,
            guard,
        })
    }

    /// `EBPF_ON_EXIT`.
    pub fn on_exit(&self) -> OnExit {
        self.on_exit
    }

    /// Applies `EBPF_ON_EXIT`: keep the pins (callers fail until a daemon is back) or remove them.
    pub fn shutdown(self) {
        match self.on_exit {
            OnExit::KeepBlocking => tracing::info!(
                pins = %self.pin_dir.display(),
                "eBPF redirect stays pinned: metadata connections fail until a daemon is back"
            ),
            OnExit::Detach => {
                for link in self.links {
                    if let Err(e) = link.unpin() {
                        tracing::warn!(error = %e, "cannot remove a link pin");
                    }
                }
                if let Err(e) = std::fs::remove_dir_all(&self.pin_dir) {
                    tracing::warn!(error = %e, dir = %self.pin_dir.display(), "cannot remove the pin directory");
                }
                tracing::info!("eBPF redirect detached and unpinned");
            }
        }
    }
}

/// Attaches the programs to every configured cgroup and pins their links over any older ones;
/// `names` gets the pins' names.
fn attach_all(
    ebpf: &mut Ebpf,
    config: &EbpfConfig,
    host: &Host,
    mode: PidMode,
    names: &mut Vec<String>,
) -> Result<Vec<PinnedLink>, EbpfError> {
    let mut links = Vec::new();
    let cgroups = open_cgroups(&host.cgroup2, &config.cgroups)?;
    for (id, dir) in &cgroups {
        // The guard first: from the moment a cgroup is redirected, nothing else gets out.
        let name = programs::EGRESS;
        let prog: &mut CgroupSkb = program(ebpf, name)?;
        let link_id = prog
            .attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(link_id).map_err(prog_err(name))?;
        links.push(pin_over(
            link.try_into(),
            &config.pin_dir,
            name,
            *id,
            names,
        )?);
        let name = programs::SOCK_OPS;
        let prog: &mut SockOps = program(ebpf, name)?;
        let link_id = prog
            .attach(dir, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(link_id).map_err(prog_err(name))?;
        links.push(pin_over(
            link.try_into(),
            &config.pin_dir,
            name,
            *id,
            names,
        )?);
        // Pinned under the same name whatever the variant: a restart that changes variant
        // replaces the predecessor's link atomically.
        for (pin, name) in mode.connect_programs() {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            let link_id = prog
                .attach(dir, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
            let link = prog.take_link(link_id).map_err(prog_err(name))?;
            links.push(pin_over(link.try_into(), &config.pin_dir, pin, *id, names)?);
        }
    }
    Ok(links)
}

/// Takes `MP_EXEMPT` and brings it in line with `EBPF_REDIRECT_HOST`: emptied when `true`, the
/// host cgroups of a first scan when `false`.
fn exempt(
    ebpf: &mut Ebpf,
    config: &EbpfConfig,
    host: &Host,
    policy: Box<dyn RedirectPolicy>,
) -> Result<Exempt, EbpfError> {
    let map = ebpf
        .take_map(maps::EXEMPT)
        .ok_or(aya::maps::MapError::InvalidName {
            name: maps::EXEMPT.to_owned(),
        })
        .map_err(map_err(maps::EXEMPT))?;
    let map = HashMap::try_from(map).map_err(map_err(maps::EXEMPT))?;
    let mut exempt = Exempt::new(
        map,
        HostCgroups::new(host.cgroup2.clone(), config.cgroups.clone(), policy),
    );
    if config.redirect_host {
        let cleared = exempt.clear();
        tracing::info!(
            cleared,
            "EBPF_REDIRECT_HOST=true: every process in EBPF_CGROUPS but the daemon is redirected"
        );
    } else {
        let scan = exempt.scan();
        tracing::info!(
            exempt = scan.exempt,
            added = scan.added,
            removed = scan.removed,
            "EBPF_REDIRECT_HOST=false: host cgroups (not a container's, not in the role mapping) are not redirected"
        );
    }
    Ok(exempt)
}

fn take_hash<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, metadataproxy_common::Record>, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        })
        .map_err(map_err(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
        .map_err(prog_err(name))?;
    prog.try_into().map_err(prog_err(name))
}

/// `(cgroup id, open directory)` of every configured cgroup.
fn open_cgroups(cgroup2: &Path, paths: &[String]) -> Result<Vec<(u64, File)>, EbpfError> {
    use std::os::unix::fs::MetadataExt as _;
    paths
        .iter()
        .map(|p| {
            let path = cgroup2.join(p.trim_start_matches('/'));
            let cgroup_err = |source| EbpfError::Cgroup {
                path: path.clone(),
                source,
            };
            let dir = File::open(&path).map_err(cgroup_err)?;
            let id = dir.metadata().map_err(cgroup_err)?.ino();
            Ok((id, dir))
        })
        .collect()
}

/// Pins `link` under a temporary name, then renames it over the pin of the same program and cgroup
/// (the predecessor's link, if any, detaches when its pin goes; ours is attached already: no gap).
fn pin_over(
    link: Result<FdLink, aya::programs::links::LinkError>,
    dir: &Path,
    program: &str,
    cgroup: u64,
    names: &mut Vec<String>,
) -> Result<PinnedLink, EbpfError> {
    let name = format!("{LINK_PREFIX}{program}-{cgroup}");
    let path = dir.join(&name);
    names.push(name);
    let next = dir.join(format!("next-{program}-{cgroup}"));
    let link = link.map_err(|e| pin_err(&next)(e.to_string()))?;
    let _ = std::fs::remove_file(&next);
    let pinned = link.pin(&next).map_err(|e| pin_err(&next)(e.to_string()))?;
    std::fs::rename(&next, &path).map_err(|e| pin_err(&path)(e.to_string()))?;
    let fd: FdLink = pinned.into();
    // Re-open the pin by its final name so `unpin` removes the right file.
    drop(fd);
    PinnedLink::from_pin(&path).map_err(|e| pin_err(&path)(e.to_string()))
}

/// Removes link pins of cgroups no longer configured (their redirect ends).
fn remove_stale_links(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PREFIX) && !keep.contains(&name) {
            tracing::info!(pin = %name, "removing the pin of a cgroup no longer in EBPF_CGROUPS");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_credentials_endpoint_is_redirected_only_with_ecs_endpoint() {
        let daemon = Daemon {
            tgid: 7,
            pidns: (4, metadataproxy_common::INIT_PID_NS_INO),
        };
        let mut target = Target {
            v4: "172.17.0.1:45001".parse().unwrap(),
            v6: None,
            ecs: false,
            own_netns_loopback: false,
        };
        assert_eq!(settings(&target, daemon, None).flags, FLAG_IPV4);
        target.ecs = true;
        assert_eq!(settings(&target, daemon, None).flags, FLAG_IPV4 | FLAG_ECS);
        target.v6 = Some("[::1]:45001".parse().unwrap());
        assert_eq!(
            settings(&target, daemon, None).flags,
            FLAG_IPV4 | FLAG_IPV6 | FLAG_ECS
        );
    }

    #[test]
    fn a_refused_connect_program_names_the_kernel_it_needs_and_the_way_out() {
        let err = refused(programs::CONNECT4_PIDNS, PidMode::Namespace)(
            aya::programs::ProgramError::NotLoaded,
        );
        let text = err.to_string();
        assert!(text.starts_with("this kernel (Linux "), "{text}");
        for part in [
            "refused eBPF program mp_connect4_pidns",
            "needs Linux 6.10 or later",
            "--pid host",
            "hostPID: true",
            "the program is not loaded",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
        let host = refused(programs::EGRESS, PidMode::Host)(aya::programs::ProgramError::NotLoaded);
        assert!(
            host.to_string()
                .contains("the programs need Linux 5.8 or later"),
            "{host}"
        );
    }

    #[test]
    fn own_namespace_callers_go_to_loopback_only_when_asked_and_the_cookie_is_known() {
        let daemon = Daemon {
            tgid: 7,
            pidns: (4, metadataproxy_common::INIT_PID_NS_INO),
        };
        let mut target = Target {
            v4: "169.254.170.45:45001".parse().unwrap(),
            v6: None,
            ecs: false,
            own_netns_loopback: true,
        };
        let s = settings(&target, daemon, Some(99));
        assert_eq!(s.flags, FLAG_IPV4 | FLAG_OWN_NETNS_LOOPBACK);
        assert_eq!(s.own_netns, 99);
        assert_eq!(
            metadataproxy_common::LOOPBACK4.to_ne_bytes(),
            [127, 0, 0, 1]
        );
        // Our namespace unknown: no loopback record could be believed, so nobody is sent there.
        let s = settings(&target, daemon, None);
        assert_eq!((s.flags, s.own_netns), (FLAG_IPV4, 0));
        target.own_netns_loopback = false;
        let s = settings(&target, daemon, Some(99));
        assert_eq!((s.flags, s.own_netns), (FLAG_IPV4, 0));
    }

    #[test]
    fn targets_and_the_daemons_pid_are_in_the_kernels_byte_order() {
        let daemon = Daemon {
            tgid: 4242,
            pidns: (4, 4_026_531_836),
        };
        let target = Target {
            v4: "169.254.170.45:45001".parse().unwrap(),
            v6: Some("[::ffff:169.254.170.45]:45001".parse().unwrap()),
            ecs: false,
            own_netns_loopback: false,
        };
        let s = settings(&target, daemon, None);
        assert_eq!(s.target4.to_ne_bytes(), [169, 254, 170, 45]);
        assert_eq!(s.port4.to_ne_bytes(), 45001u16.to_be_bytes());
        assert_eq!(s.target6[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(s.target6[3].to_ne_bytes(), [169, 254, 170, 45]);
        assert_eq!((s.target6[0], s.target6[1]), (0, 0));
        assert_eq!(s.port6, s.port4);
        assert_eq!(
            (s.daemon_tgid, s.pidns_dev, s.pidns_ino),
            (4242, 4, 4_026_531_836)
        );
    }
}
