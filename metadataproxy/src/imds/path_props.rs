//! Properties: no path the router forwards upstream (proxy mode) reaches an IAM route, however the
//! upstream server rewrites it (see `fuzzing::upstream_views`); and the common paths' shortcut
//! (`route`) gives exactly what the general parse gives.

use proptest::prelude::*;

use super::{classify, parse, route};
use crate::fuzzing::{forwarded, reaches_iam, upstream_views};

/// Pieces of paths that attacks are made of.
const PIECES: &[&str] = &[
    "latest",
    "2021-07-15",
    "1.0",
    "meta-data",
    "Meta-Data",
    "META-DATA",
    "iam",
    "IAM",
    "Iam",
    "iam.",
    "iam..",
    "iam;x",
    "iam.;",
    "iam%2f",
    "identity-credentials",
    "security-credentials",
    "info",
    "placement",
    "api",
    "token",
    ".",
    "..",
    "...",
    ".;",
    "..;",
    "..;x",
    ";",
    ";x",
    "%2e",
    "%2e%2e",
    "%252e%252e",
    "%2f",
    "%5c",
    "%69am",
    "%2569am",
    "x",
    "meta-data.",
    "meta-data;a",
    "",
];
const SEPARATORS: &[&str] = &["/", "/", "/", "//", "\\", "/./", "/../", ";/", "./"];

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(PIECES).prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._;%~:@!$&'()*+,=\\\\-]{0,6}",
    ]
}

fn hostile_path() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((piece(), proptest::sample::select(SEPARATORS)), 0..8),
        any::<bool>(),
    )
        .prop_map(|(parts, trailing)| {
            let mut p = String::from("/");
            for (i, (piece, sep)) in parts.iter().enumerate() {
                if i > 0 {
                    p.push_str(sep);
                }
                p.push_str(piece);
            }
            if trailing {
                p.push('/');
            }
            p
        })
}

/// Paths near the two the shortcut knows: its prefixes, with role names of every byte class.
fn near_common_path() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(
            &[
                "/latest/meta-data/iam/security-credentials/",
                "/latest/meta-data/iam/security-credentials",
                "/latest/meta-data/iam/",
                "/latest/api/token",
                "/latest/api/",
                "/Latest/meta-data/iam/security-credentials/",
                "/2021-07-15/meta-data/iam/security-credentials/",
            ][..],
        ),
        "[a-zA-Z0-9_+=,@.;%/~:!$&'()* -]{0,12}",
        0..3_usize,
    )
        .prop_map(|(prefix, tail, long)| {
            let mut p = format!("{prefix}{tail}");
            // Around the length limit, too.
            if long > 0 {
                p.push_str(&"r".repeat(1024 - p.len().min(1024) - 1 + long));
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn the_shortcut_routes_exactly_as_the_general_parse(
        raw in prop_oneof![near_common_path(), hostile_path()],
    ) {
        let general = parse(&raw).map(|p| (p, classify(&p)));
        prop_assert_eq!(route(&raw), general, "{:?}", raw);
    }

    #[test]
    fn no_forwarded_path_reaches_iam_under_any_upstream_normalisation(raw in hostile_path()) {
        if let Ok(p) = parse(&raw)
            && forwarded(&classify(&p))
        {
            let sent = p.as_path();
            prop_assert_eq!(&sent, &raw, "the path is forwarded as received");
            for view in upstream_views(sent) {
                prop_assert!(!reaches_iam(&view), "{:?} forwarded; upstream may read {:?}", raw, view);
            }
        }
    }
}

/// The model is not vacuous: each known attack reaches IAM under some rewriting, and is refused.
#[test]
fn the_normalisation_model_sees_known_attacks() {
    for attack in [
        "/latest/meta-data/iam/../iam/security-credentials/host-role",
        "/latest/meta-data/x/../iam/info",
        "/latest/meta-data/%2e%2e/meta-data/iam/info",
        "/latest/meta-data/x/%252e%252e/iam/info",
        "/latest/meta-data%2fiam/info",
        "/latest/meta-data\\iam\\info",
        "/latest/meta-data//iam/info",
        "/latest/Meta-Data/IAM/info",
        "/latest/meta-data/iam./info",
        "/latest/meta-data/iam;x/info",
        "/latest/meta-data/x/..;/iam/info",
        "/latest/meta-data/;x/iam/info",
        "/latest/meta-data/identity-credentials/ec2/info",
    ] {
        assert!(
            upstream_views(attack).iter().any(|v| reaches_iam(v)),
            "model misses {attack}"
        );
        let forwarded = parse(attack).is_ok_and(|p| forwarded(&classify(&p)));
        assert!(!forwarded, "{attack} would be forwarded");
    }
}
