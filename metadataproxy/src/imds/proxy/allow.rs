//! Which metadata paths proxy mode forwards (`PROXY_ALLOWED_PATHS`): by default only what SDKs and
//! common agents read, never the host's secrets (`user-data`, the signed identity documents,
//! instance tags); `*` forwards everything but the IAM and identity-credentials routes.
//!
//! Every entry names whole segments after the version: `meta-data/placement` allows
//! `/latest/meta-data/placement/region` but not `/latest/meta-data/placementx`, nor any other
//! letter case. The version listings (`/`, `/<version>/`) are always forwarded.

use super::super::path::ImdsPath;

/// Subtrees forwarded by default (README, "Proxy allow-list", says who reads each).
pub const DEFAULT_SUBTREES: &[&str] = &[
    "meta-data/ami-id",
    "meta-data/autoscaling/target-lifecycle-state",
    "meta-data/block-device-mapping",
    "meta-data/events",
    "meta-data/hostname",
    "meta-data/instance-id",
    "meta-data/instance-life-cycle",
    "meta-data/instance-type",
    "meta-data/local-hostname",
    "meta-data/local-ipv4",
    "meta-data/mac",
    "meta-data/network",
    "meta-data/outpost-arn",
    "meta-data/placement",
    "meta-data/public-hostname",
    "meta-data/public-ipv4",
    "meta-data/reservation-id",
    "meta-data/security-groups",
    "meta-data/services",
    "meta-data/spot",
    "dynamic/instance-identity/document",
];

/// Directory listings forwarded by default, themselves only (they name what exists, nothing more).
pub const DEFAULT_LISTINGS: &[&str] = &["meta-data", "dynamic", "dynamic/instance-identity"];

/// One allowed path: its segments, and whether what lies below it is allowed too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    segments: Vec<String>,
    subtree: bool,
}

impl Entry {
    fn new(path: &str, subtree: bool) -> Self {
        Self {
            segments: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            subtree,
        }
    }

    fn matches(&self, p: &ImdsPath<'_>) -> bool {
        let mut segments = p.segments();
        let prefix = self
            .segments
            .iter()
            .all(|want| segments.next() == Some(want.as_str()));
        prefix && (self.subtree || segments.next().is_none())
    }
}

/// What proxy mode may forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    /// `None`: everything (the router and the forwarder still refuse IAM paths).
    entries: Option<Vec<Entry>>,
}

impl AllowList {
    /// Every path (`PROXY_ALLOWED_PATHS=*`).
    pub fn everything() -> Self {
        Self { entries: None }
    }

    /// The built-in list ([`DEFAULT_SUBTREES`], [`DEFAULT_LISTINGS`]), plus `extra` subtrees.
    pub fn builtin_and<S: AsRef<str>>(extra: &[S]) -> Self {
        let mut list = Self::only(extra);
        if let Some(entries) = &mut list.entries {
            entries.extend(DEFAULT_SUBTREES.iter().map(|p| Entry::new(p, true)));
            entries.extend(DEFAULT_LISTINGS.iter().map(|p| Entry::new(p, false)));
        }
        list
    }

    /// Only these subtrees (like `meta-data/placement`).
    pub fn only<S: AsRef<str>>(subtrees: &[S]) -> Self {
        Self {
            entries: Some(
                subtrees
                    .iter()
                    .map(|p| Entry::new(p.as_ref(), true))
                    .collect(),
            ),
        }
    }

    /// Whether `p` may be forwarded: a version listing, or a path under a version that an entry
    /// allows. Version-less paths other than `/` pass only [`Self::everything`].
    pub fn allows(&self, p: &ImdsPath<'_>) -> bool {
        let Some(entries) = &self.entries else {
            return true;
        };
        if p.segments().next().is_none() {
            // `/` (no version, no segment) or `/<version>/`.
            return true;
        }
        p.version.is_some() && entries.iter().any(|e| e.matches(p))
    }
}

impl Default for AllowList {
    /// The built-in list.
    fn default() -> Self {
        Self::builtin_and::<&str>(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds::path::parse;

    fn allows(list: &AllowList, raw: &str) -> bool {
        list.allows(&parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}")))
    }

    #[test]
    fn the_default_forwards_what_sdks_and_agents_read() {
        let list = AllowList::default();
        for raw in [
            "/",
            "/latest/",
            "/latest",
            "/2021-07-15/",
            "/latest/meta-data/",
            "/latest/meta-data",
            "/latest/meta-data/placement/availability-zone/",
            "/latest/meta-data/placement/region",
            "/2016-09-02/meta-data/placement/availability-zone-id",
            "/latest/meta-data/instance-id",
            "/latest/meta-data/instance-type",
            "/latest/meta-data/instance-life-cycle",
            "/latest/meta-data/ami-id",
            "/latest/meta-data/hostname",
            "/latest/meta-data/local-hostname",
            "/latest/meta-data/local-ipv4",
            "/latest/meta-data/public-hostname",
            "/latest/meta-data/public-ipv4",
            "/latest/meta-data/mac",
            "/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id",
            "/latest/meta-data/services/partition",
            "/latest/meta-data/services/domain",
            "/latest/meta-data/reservation-id",
            "/latest/meta-data/security-groups",
            "/latest/meta-data/block-device-mapping/root",
            "/latest/meta-data/events/maintenance/scheduled",
            "/latest/meta-data/events/recommendations/rebalance",
            "/latest/meta-data/spot/instance-action",
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            "/latest/meta-data/outpost-arn",
            "/latest/dynamic/",
            "/latest/dynamic/instance-identity/",
            "/latest/dynamic/instance-identity/document",
        ] {
            assert!(allows(&list, raw), "{raw} should be forwarded by default");
        }
    }

    #[test]
    fn the_default_refuses_the_hosts_secrets() {
        let list = AllowList::default();
        for raw in [
            "/latest/user-data",
            "/latest/user-data/",
            "/2009-04-04/user-data",
            "/latest/dynamic/instance-identity/pkcs7",
            "/latest/dynamic/instance-identity/signature",
            "/latest/dynamic/instance-identity/rsa2048",
            "/latest/dynamic/instance-identity/document/x/../pkcs7",
            "/latest/dynamic/fws/instance-monitoring",
            "/latest/meta-data/tags/instance/Name",
            "/latest/meta-data/tags/",
            "/latest/meta-data/public-keys/0/openssh-key",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            "/latest/meta-data/iam/security-credentials/host-role",
            "/latest/meta-data/placementx",
            "/latest/meta-data/Placement/region",
            "/latest/meta-data/autoscaling/",
            "/latest/dynamic/instance-identity/document.",
            "/meta-data/placement/region",
            "/user-data",
        ] {
            // Dot segments are refused by the parser already; count them as refused here.
            let refused = parse(raw).map_or(true, |p| !list.allows(&p));
            assert!(refused, "{raw} must not be forwarded by default");
        }
    }

    #[test]
    fn explicit_lists_everything_and_default_plus_extra() {
        let only = AllowList::only(&["meta-data/placement", "/meta-data/instance-id/"]);
        assert!(allows(&only, "/latest/meta-data/placement/region"));
        assert!(allows(&only, "/latest/meta-data/instance-id"));
        assert!(allows(&only, "/latest/"), "version listings always");
        assert!(
            !allows(&only, "/latest/meta-data/"),
            "not a default listing"
        );
        assert!(!allows(&only, "/latest/meta-data/mac"));
        let everything = AllowList::everything();
        assert!(allows(&everything, "/latest/user-data"));
        assert!(allows(&everything, "/anything/at/all"));
        let more = AllowList::builtin_and(&["user-data"]);
        assert!(allows(&more, "/latest/user-data"));
        assert!(allows(&more, "/latest/meta-data/mac"));
        assert!(!allows(&more, "/latest/dynamic/instance-identity/pkcs7"));
    }
}
