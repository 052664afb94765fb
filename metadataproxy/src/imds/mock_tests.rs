//! Tests for the mock tree: every listed entry resolves, and SDK-read values are right.

use super::*;
use crate::imds::path::parse;

fn get(tree: &MockTree, raw: &str) -> Option<MockAnswer> {
    let p = parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
    tree.get(&p)
}

fn body(tree: &MockTree, raw: &str) -> String {
    let answer = get(tree, raw).unwrap_or_else(|| panic!("{raw} did not resolve"));
    String::from_utf8(answer.body.to_vec()).unwrap_or_else(|e| panic!("{raw}: not UTF-8: {e}"))
}

/// Follows every entry of every listing below `start`; returns how many paths it resolved.
fn walk(tree: &MockTree, start: &str) -> usize {
    let mut pending = vec![start.to_owned()];
    let mut resolved = 0;
    while let Some(dir) = pending.pop() {
        let listing = body(tree, &dir);
        assert!(!listing.is_empty(), "{dir} lists nothing");
        assert!(
            !listing.ends_with('\n'),
            "{dir} listing ends with a newline"
        );
        for entry in listing.split('\n') {
            assert!(!entry.is_empty(), "{dir} lists an empty entry");
            if entry == "iam/" {
                continue; // served by the IAM handlers, not the mock
            }
            // `0=boot` names the directory `0/`, as on the real IMDS.
            let path_part = match entry.split_once('=') {
                Some((index, _)) => format!("{index}/"),
                None => entry.to_owned(),
            };
            let child = format!("{dir}{path_part}");
            let answer = get(tree, &child).unwrap_or_else(|| panic!("{child} listed but missing"));
            resolved += 1;
            if let Some(bare) = child.strip_suffix('/') {
                assert_eq!(
                    get(tree, bare),
                    Some(answer),
                    "{bare} without slash differs"
                );
                pending.push(child);
            } else {
                let slashed = format!("{child}/");
                assert_eq!(get(tree, &slashed), Some(answer), "{slashed} differs");
            }
        }
    }
    resolved
}

#[test]
fn every_listed_entry_resolves() {
    let tree = MockTree::new("mockedid");
    assert!(walk(&tree, "/latest/meta-data/") >= 45);
    assert!(walk(&tree, "/latest/dynamic/") >= 7);
    assert!(
        walk(&tree, "/2016-09-02/meta-data/") >= 45,
        "dated versions serve the same tree"
    );
}

#[test]
fn version_level_lists_like_the_real_imds() {
    let tree = MockTree::new("mockedid");
    assert_eq!(body(&tree, "/latest/"), "dynamic\nmeta-data");
    assert_eq!(body(&tree, "/latest"), "dynamic\nmeta-data");
    for version in body(&tree, "/").split('\n') {
        assert_eq!(body(&tree, &format!("/{version}/")), "dynamic\nmeta-data");
    }
}

#[test]
fn values_sdks_read() {
    let tree = MockTree::new("mockedid");
    let table = [
        ("/latest/meta-data/instance-id", "i-mockedid"),
        ("/latest/meta-data/instance-type", "t2.medium"),
        (
            "/latest/meta-data/placement/availability-zone",
            "us-east-1a",
        ),
        (
            "/latest/meta-data/placement/availability-zone/",
            "us-east-1a",
        ),
        ("/latest/meta-data/placement/region", "us-east-1"),
        ("/latest/meta-data/local-ipv4", "127.255.0.1"),
        ("/latest/meta-data/local-hostname", "mocked.internal"),
        ("/latest/meta-data/mac", "ae:30:76:ce:38:62"),
        ("/latest/meta-data/ami-id", "ami-mockedami"),
        ("/latest/meta-data/services/domain", "amazonaws.com"),
        ("/latest/meta-data/public-keys/", "0=boot"),
        ("/latest/meta-data/placement/", "availability-zone\nregion"),
        ("/latest/meta-data/block-device-mapping/root", "/dev/sda1"),
        ("/latest/dynamic/", "fws/\ninstance-identity/"),
        ("/latest/dynamic/fws/instance-monitoring", "enabled"),
        ("/2009-04-04/meta-data/instance-id", "i-mockedid"),
    ];
    for (path, want) in table {
        assert_eq!(body(&tree, path), want, "{path}");
    }
    let macs = body(&tree, "/latest/meta-data/network/interfaces/macs/");
    assert_eq!(macs, format!("{}/", body(&tree, "/latest/meta-data/mac")));
}

#[test]
fn identity_document_is_json_matching_the_tree() {
    let tree = MockTree::new("0123abcd");
    let answer = get(&tree, "/latest/dynamic/instance-identity/document")
        .unwrap_or_else(|| panic!("document missing"));
    assert_eq!(answer.content_type, "application/json");
    let doc: serde_json::Value =
        serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("invalid JSON: {e}"));
    assert_eq!(doc["instanceId"], "i-0123abcd");
    assert_eq!(
        doc["region"],
        body(&tree, "/latest/meta-data/placement/region")
    );
    assert_eq!(
        doc["availabilityZone"],
        body(&tree, "/latest/meta-data/placement/availability-zone")
    );
    assert_eq!(
        doc["privateIp"],
        body(&tree, "/latest/meta-data/local-ipv4")
    );
    assert_eq!(doc["instanceType"], "t2.medium");
    for key in [
        "accountId",
        "architecture",
        "imageId",
        "pendingTime",
        "version",
    ] {
        assert!(doc[key].is_string(), "{key} missing");
    }
}

#[test]
fn unknown_iam_and_unversioned_paths_are_not_mocked() {
    let tree = MockTree::new("mockedid");
    for path in [
        "/latest/meta-data/nope",
        "/latest/meta-data/instance-id/extra",
        "/latest/meta-data/Instance-Id",
        "/latest/meta-data/iam/",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/identity-credentials/ec2/info",
        "/latest/meta-data/public-keys/0=boot",
        "/latest/user-data",
        "/latest/api/token",
        "/meta-data/instance-id",
        "/latest/dynamic/instance-identity/document/x",
    ] {
        assert_eq!(get(&tree, path), None, "{path}");
    }
}
