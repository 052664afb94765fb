//! Policy-routing rules that refuse to forward packets to the metadata addresses (rtnetlink, no
//! `ip`, no iptables).
//!
//! A container with `CAP_NET_RAW` (Docker's default) can write Ethernet frames on an `AF_PACKET`
//! socket: they never pass its cgroup's hooks, so neither the redirect nor the egress guard sees
//! them, and the host *forwards* them to the real IMDS. A forwarded packet's route lookup runs the
//! rules with the interface it came in on; a packet of one of this host's own sockets is looked up
//! with `iif lo` (Linux sets the loopback device as the input interface of locally generated
//! traffic). So, per guarded address (169.254.169.254 and `fd00:ec2::254`, with `ECS_ENDPOINT`
//! also 169.254.170.23 and `fd00:ec2::23`):
//!
//! ```text
//! 90: from all to 169.254.169.254 iif lo goto 92    this host's own packets skip the next rule
//! 91: from all to 169.254.169.254 prohibit          anything else (forwarded) is refused
//! 92: from all to 169.254.169.254 nop               the host's own continue with its other rules
//! ```
//!
//! The host's own packets go on through the rules that follow exactly as without these (no table
//! is forced on them). Packets to an address that is local on the host are delivered by the
//! `local` rule (priority 0) before these are reached. The rules stay after the daemon exits
//! (fail closed; `EBPF_ON_EXIT=detach` removes them); adding one that is there already is a no-op
//! (the kernel answers `EEXIST`), so restarts never duplicate them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use metadataproxy_common::{ECS_IPV4, ECS_IPV6, IMDS_IPV4, IMDS_IPV6};
use rtnetlink::IpVersion;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

/// Priority of the rules that let this host's own packets skip [`PREF_PROHIBIT`].
pub const PREF_LOCAL: u32 = 90;
/// Priority of the rules that refuse every other packet to a metadata address.
pub const PREF_PROHIBIT: u32 = 91;
/// Priority of the rules [`PREF_LOCAL`] jumps to (they do nothing: evaluation goes on).
pub const PREF_CONTINUE: u32 = 92;
// A `goto` may only jump forward, over the refusal.
const _: () = assert!(PREF_LOCAL < PREF_PROHIBIT && PREF_PROHIBIT < PREF_CONTINUE);
/// The interface locally generated packets are looked up with.
const LO: &str = "lo";

/// What a rule does with a packet to its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `iif lo goto 92`: a packet of this host's own sockets skips [`Action::Prohibit`].
    SkipIfLocal,
    /// `prohibit`: any other packet (forwarded) is refused.
    Prohibit,
    /// `nop`: where skipped packets go on with the host's other rules.
    Continue,
}

/// One of the rules, for one guarded address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The guarded address (`to <address>/32` or `/128`).
    pub to: IpAddr,
    /// What the rule does.
    pub action: Action,
}

impl Rule {
    /// The rule's priority.
    pub fn pref(self) -> u32 {
        match self.action {
            Action::SkipIfLocal => PREF_LOCAL,
            Action::Prohibit => PREF_PROHIBIT,
            Action::Continue => PREF_CONTINUE,
        }
    }

    fn family(self) -> AddressFamily {
        if self.to.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        }
    }

    fn prefix_len(self) -> u8 {
        if self.to.is_ipv4() { 32 } else { 128 }
    }

    /// The rule as netlink carries it (`RTM_NEWRULE` / `RTM_DELRULE`).
    fn message(self) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = self.family();
        msg.header.dst_len = self.prefix_len();
        msg.header.action = match self.action {
            Action::SkipIfLocal => RuleAction::Goto,
            Action::Prohibit => RuleAction::Prohibit,
            Action::Continue => RuleAction::Nop,
        };
        msg.attributes.push(RuleAttribute::Priority(self.pref()));
        msg.attributes.push(RuleAttribute::Destination(self.to));
        if self.action == Action::SkipIfLocal {
            msg.attributes.push(RuleAttribute::Iifname(LO.to_owned()));
            msg.attributes.push(RuleAttribute::Goto(PREF_CONTINUE));
        }
        msg
    }

    /// Whether `msg` (from a dump) is this rule: same priority, address and action, and no
    /// other selector that would narrow it (a narrower rule does not do this one's work).
    fn is(self, msg: &RuleMessage) -> bool {
        let want = self.message();
        if msg.header.family != want.header.family
            || msg.header.dst_len != want.header.dst_len
            || msg.header.src_len != 0
            || msg.header.tos != 0
            || msg.header.action != want.header.action
            || !msg.header.flags.is_empty()
        {
            return false;
        }
        let mut seen = 0;
        for attr in &msg.attributes {
            match attr {
                // What every dumped rule carries without narrowing it.
                RuleAttribute::Table(_)
                | RuleAttribute::Protocol(_)
                | RuleAttribute::SuppressPrefixLen(u32::MAX)
                | RuleAttribute::FwMark(0)
                | RuleAttribute::FwMask(0) => {}
                other if want.attributes.contains(other) => seen += 1,
                _ => return false,
            }
        }
        seen == want.attributes.len()
    }
}

impl fmt::Display for Rule {
    /// As `ip rule` writes it (`ip -6 rule` for IPv6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pref {} to {}/{}",
            self.pref(),
            self.to,
            self.prefix_len()
        )?;
        match self.action {
            Action::SkipIfLocal => write!(f, " iif {LO} goto {PREF_CONTINUE}"),
            Action::Prohibit => f.write_str(" prohibit"),
            Action::Continue => f.write_str(" nop"),
        }
    }
}

/// The guarded addresses: the metadata service's, and with `ECS_ENDPOINT` the
/// container-credentials endpoint's.
fn addresses(ecs: bool) -> Vec<IpAddr> {
    let v6 = |w: [u32; 4]| {
        IpAddr::V6(Ipv6Addr::from(
            (u128::from(w[0]) << 96)
                | (u128::from(w[1]) << 64)
                | (u128::from(w[2]) << 32)
                | u128::from(w[3]),
        ))
    };
    let mut all = vec![IpAddr::V4(Ipv4Addr::from(IMDS_IPV4)), v6(IMDS_IPV6)];
    if ecs {
        all.extend([IpAddr::V4(Ipv4Addr::from(ECS_IPV4)), v6(ECS_IPV6)]);
    }
    all
}

/// The rules for these settings, in the order they are added: per address the jump target, then
/// the jump, then the refusal, so that no moment refuses this host's own packets.
pub fn wanted(ecs: bool) -> Vec<Rule> {
    addresses(ecs)
        .into_iter()
        .flat_map(|to| {
            [Action::Continue, Action::SkipIfLocal, Action::Prohibit]
                .map(|action| Rule { to, action })
        })
        .collect()
}

/// The rules a predecessor may have left that these settings do not want: the container-credentials
/// endpoint's when `ECS_ENDPOINT` is off.
pub fn unwanted(ecs: bool) -> Vec<Rule> {
    let keep = wanted(ecs);
    wanted(true)
        .into_iter()
        .filter(|r| !keep.contains(r))
        .collect()
}

/// Why the rules could not be listed, added or removed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Listing the rules of a family failed.
    #[error("cannot list the {family} policy-routing rules: {source}")]
    List {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding a rule failed.
    #[error(
        "cannot add the policy-routing rule `{rule}` (it needs CAP_NET_ADMIN and a kernel with policy routing, CONFIG_IP_MULTIPLE_TABLES): {source}"
    )]
    Add {
        /// The rule.
        rule: Rule,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Removing a rule failed.
    #[error("cannot remove the policy-routing rule `{rule}`: {source}")]
    Remove {
        /// The rule.
        rule: Rule,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// What [`install`] did.
#[derive(Debug, Default)]
pub struct Installed {
    /// The rules it added.
    pub added: Vec<Rule>,
    /// How many were in place already.
    pub present: usize,
    /// Whether the IPv6 ones were left out: the kernel has no IPv6 (nothing to forward).
    pub no_ipv6: bool,
}

fn handle() -> Result<rtnetlink::Handle, RulesError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(RulesError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The kernel's errno in a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// Adds every rule of `rules` that is not in place (see the module's doc).
pub async fn install(rules: &[Rule]) -> Result<Installed, RulesError> {
    let handle = handle()?;
    let mut done = Installed::default();
    for rule in rules {
        if done.no_ipv6 && rule.to.is_ipv6() {
            continue;
        }
        let mut add = handle.rule().add();
        *add.message_mut() = rule.message();
        match add.execute().await {
            Ok(()) => done.added.push(*rule),
            Err(e) if errno(&e) == Some(libc::EEXIST) => done.present += 1,
            Err(e) if rule.to.is_ipv6() && errno(&e) == Some(libc::EAFNOSUPPORT) => {
                done.no_ipv6 = true;
            }
            Err(source) => {
                return Err(RulesError::Add {
                    rule: *rule,
                    source,
                });
            }
        }
    }
    Ok(done)
}

/// Removes the rules of `rules` that are in place (refusals first); how many it removed.
pub async fn remove(rules: &[Rule]) -> Result<usize, RulesError> {
    let handle = handle()?;
    let mut removed = 0;
    for rule in rules.iter().rev() {
        match handle.rule().del(rule.message()).execute().await {
            Ok(()) => removed += 1,
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EAFNOSUPPORT)) => {}
            Err(source) => {
                return Err(RulesError::Remove {
                    rule: *rule,
                    source,
                });
            }
        }
    }
    Ok(removed)
}

/// The rules of `rules` that are not in place (for `doctor`). IPv6 ones are never missing on a
/// kernel without IPv6.
pub async fn missing(rules: &[Rule]) -> Result<Vec<Rule>, RulesError> {
    let handle = handle()?;
    let mut present = Vec::new();
    for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let mut dump = handle.rule().get(version).execute();
        loop {
            match dump.try_next().await {
                Ok(Some(msg)) => present.push(msg),
                Ok(None) => break,
                Err(e) if v6 && errno(&e) == Some(libc::EAFNOSUPPORT) => {
                    let v4: Vec<Rule> = rules.iter().copied().filter(|r| r.to.is_ipv4()).collect();
                    return Ok(missing_from(&v4, &present));
                }
                Err(source) => return Err(RulesError::List { family, source }),
            }
        }
    }
    Ok(missing_from(rules, &present))
}

/// The rules of `rules` that none of `present` is.
fn missing_from(rules: &[Rule], present: &[RuleMessage]) -> Vec<Rule> {
    rules
        .iter()
        .copied()
        .filter(|r| !present.iter().any(|m| r.is(m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_rules_per_guarded_address_in_the_order_that_never_refuses_the_host() {
        let rules: Vec<String> = wanted(false).iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            [
                "pref 92 to 169.254.169.254/32 nop",
                "pref 90 to 169.254.169.254/32 iif lo goto 92",
                "pref 91 to 169.254.169.254/32 prohibit",
                "pref 92 to fd00:ec2::254/128 nop",
                "pref 90 to fd00:ec2::254/128 iif lo goto 92",
                "pref 91 to fd00:ec2::254/128 prohibit",
            ]
        );
        let ecs: Vec<IpAddr> = wanted(true).iter().map(|r| r.to).collect();
        assert!(unwanted(true).is_empty());
        let stale: Vec<IpAddr> = unwanted(false).iter().map(|r| r.to).collect();
        assert_eq!(stale.len(), 6);
        assert!(
            stale
                .iter()
                .all(|a| ["169.254.170.23", "fd00:ec2::23"].contains(&a.to_string().as_str())),
            "{stale:?}"
        );
        assert_eq!(ecs.len(), 12);
        for addr in ["169.254.170.23", "fd00:ec2::23"] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(ecs.iter().filter(|a| **a == addr).count(), 3, "{addr}");
        }
    }

    #[test]
    fn a_rule_is_recognised_in_a_dump_but_not_a_narrower_or_other_one() {
        let skip = Rule {
            to: "169.254.169.254".parse().unwrap(),
            action: Action::SkipIfLocal,
        };
        // What the kernel dumps: the rule's own attributes plus neutral ones.
        let mut dumped = skip.message();
        dumped.attributes.push(RuleAttribute::Table(0));
        dumped
            .attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        assert!(skip.is(&dumped));
        assert!(missing_from(&[skip], &[dumped.clone()]).is_empty());

        let mut narrower = dumped.clone();
        narrower.attributes.push(RuleAttribute::FwMark(1));
        assert!(!skip.is(&narrower));
        let mut other_goto = skip.message();
        other_goto
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::Goto(_)));
        other_goto
            .attributes
            .push(RuleAttribute::Goto(PREF_PROHIBIT));
        assert!(!skip.is(&other_goto));
        let prohibit = Rule {
            action: Action::Prohibit,
            ..skip
        };
        assert!(!prohibit.is(&dumped));
        let v6 = Rule {
            to: "fd00:ec2::254".parse().unwrap(),
            ..skip
        };
        assert!(!v6.is(&dumped));
        assert_eq!(missing_from(&[skip, v6], &[dumped]), [v6]);
    }

    #[test]
    fn the_netlink_messages_are_what_ip_rule_sends() {
        let skip = Rule {
            to: "fd00:ec2::254".parse().unwrap(),
            action: Action::SkipIfLocal,
        }
        .message();
        assert_eq!(skip.header.family, AddressFamily::Inet6);
        assert_eq!(skip.header.dst_len, 128);
        assert_eq!(skip.header.action, RuleAction::Goto);
        assert!(
            skip.attributes
                .contains(&RuleAttribute::Iifname("lo".into()))
        );
        assert!(
            skip.attributes
                .contains(&RuleAttribute::Goto(PREF_CONTINUE))
        );
        let prohibit = Rule {
            to: "169.254.169.254".parse().unwrap(),
            action: Action::Prohibit,
        }
        .message();
        assert_eq!(prohibit.header.family, AddressFamily::Inet);
        assert_eq!(prohibit.header.table, 0, "no table for a prohibit rule");
        assert_eq!(prohibit.attributes.len(), 2, "{prohibit:?}");
    }
}
