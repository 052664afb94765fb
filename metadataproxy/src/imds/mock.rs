//! The mocked metadata tree served with `MOCK_API=true`: every non-IAM, non-token route.
//!
//! Values follow Lyft metadataproxy 2.2.0's mock where it had one; the shape follows the real IMDS
//! and amazon-ec2-metadata-mock, so every entry a listing names resolves.

use bytes::Bytes;
use serde_json::json;

use super::path::ImdsPath;

const TEXT: &str = "text/plain";
const JSON: &str = "application/json";

const MAC: &str = "ae:30:76:ce:38:62";
const HOSTNAME: &str = "mocked.internal";
const LOCAL_IPV4: &str = "127.255.0.1";
const PUBLIC_IPV4: &str = "127.255.0.2";
const PUBLIC_HOSTNAME: &str = "mocked.compute-1.amazonaws.com";
const AMI_ID: &str = "ami-mockedami";
const INSTANCE_TYPE: &str = "t2.medium";
const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";
const ACCOUNT_ID: &str = "123456789012";

/// API versions listed at `/`; every one of them resolves, as any date-shaped version does.
const VERSIONS: &str = "2007-01-19\n2009-04-04\n2012-01-12\n2016-09-02\n2021-03-23\nlatest";

/// One mocked response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockAnswer {
    /// The response body (shared with the tree: serving it copies nothing).
    pub body: Bytes,
    /// The `Content-Type` to send with it.
    pub content_type: &'static str,
}

#[derive(Debug)]
enum Node {
    /// The children, and their listing (rendered once).
    Dir(Vec<Child>, Bytes),
    Leaf(Bytes, &'static str),
    /// Listed here but answered by another handler (the IAM routes): the mock never serves it.
    Elsewhere,
}

#[derive(Debug)]
struct Child {
    name: &'static str,
    /// How the parent lists it, when not `name` (plus `/` for directories).
    listed_as: Option<&'static str>,
    node: Node,
}

fn leaf(name: &'static str, body: &str) -> Child {
    Child {
        name,
        listed_as: None,
        node: Node::Leaf(Bytes::from(body.to_owned()), TEXT),
    }
}

fn dir(name: &'static str, children: Vec<Child>) -> Child {
    Child {
        name,
        listed_as: None,
        node: dir_node(children),
    }
}

/// A directory node: its children and their listing.
fn dir_node(children: Vec<Child>) -> Node {
    let listing = Bytes::from(listing(&children));
    Node::Dir(children, listing)
}

/// The mocked tree below `/<version>/`.
#[derive(Debug)]
pub struct MockTree {
    version_root: Node,
}

impl MockTree {
    /// A tree whose `instance-id` is `i-` + `instance_id_suffix` (Lyft's default: `mockedid`).
    pub fn new(instance_id_suffix: &str) -> Self {
        let instance_id = format!("i-{instance_id_suffix}");
        // The real IMDS lists the version level without trailing slashes.
        let mut meta = dir("meta-data", meta_data(&instance_id));
        meta.listed_as = Some("meta-data");
        let mut dynamic = dir("dynamic", dynamic(&instance_id));
        dynamic.listed_as = Some("dynamic");
        Self {
            version_root: dir_node(vec![dynamic, meta]),
        }
    }

    /// The mocked answer for `p`, or `None` when the mock has nothing there (the caller sends 404).
    /// Directories answer with or without a trailing slash; so do leaves.
    pub fn get(&self, p: &ImdsPath<'_>) -> Option<MockAnswer> {
        if p.version.is_none() {
            return p.segments().next().is_none().then(|| MockAnswer {
                body: Bytes::from_static(VERSIONS.as_bytes()),
                content_type: TEXT,
            });
        }
        let mut node = &self.version_root;
        for seg in p.segments() {
            let Node::Dir(children, _) = node else {
                return None;
            };
            node = &children.iter().find(|c| c.name == seg)?.node;
        }
        match node {
            Node::Dir(_, listing) => Some(MockAnswer {
                body: listing.clone(),
                content_type: TEXT,
            }),
            Node::Leaf(body, content_type) => Some(MockAnswer {
                body: body.clone(),
                content_type,
            }),
            Node::Elsewhere => None,
        }
    }
}

/// Entries separated by `\n`, directories with a trailing `/`, no final newline.
fn listing(children: &[Child]) -> String {
    let names: Vec<String> = children
        .iter()
        .map(|c| match (c.listed_as, &c.node) {
            (Some(shown), _) => shown.to_owned(),
            (None, Node::Dir(..) | Node::Elsewhere) => format!("{}/", c.name),
            (None, Node::Leaf(..)) => c.name.to_owned(),
        })
        .collect();
    names.join("\n")
}

fn meta_data(instance_id: &str) -> Vec<Child> {
    let mut public_key_0 = dir(
        "0",
        vec![leaf(
            "openssh-key",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCmocked boot",
        )],
    );
    // IMDS lists keys as `<index>=<name>`; the index is the path (AEMM does the same).
    public_key_0.listed_as = Some("0=boot");
    vec![
        leaf("ami-id", AMI_ID),
        leaf("ami-launch-index", "0"),
        leaf("ami-manifest-path", "(unknown)"),
        dir(
            "block-device-mapping",
            vec![leaf("ami", "/dev/sda1"), leaf("root", "/dev/sda1")],
        ),
        leaf("hostname", HOSTNAME),
        Child {
            name: "iam",
            listed_as: None,
            node: Node::Elsewhere,
        },
        leaf("instance-action", "none"),
        leaf("instance-id", instance_id),
        leaf("instance-type", INSTANCE_TYPE),
        leaf("local-hostname", HOSTNAME),
        leaf("local-ipv4", LOCAL_IPV4),
        leaf("mac", MAC),
        dir(
            "metrics",
            vec![leaf(
                "vhostmd",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            )],
        ),
        dir(
            "network",
            vec![dir("interfaces", vec![dir("macs", vec![mac_dir()])])],
        ),
        dir(
            "placement",
            vec![leaf("availability-zone", ZONE), leaf("region", REGION)],
        ),
        leaf("profile", "default-hvm"),
        leaf("public-hostname", PUBLIC_HOSTNAME),
        leaf("public-ipv4", PUBLIC_IPV4),
        dir("public-keys", vec![public_key_0]),
        leaf("reservation-id", "r-mockedreservation"),
        leaf("security-groups", "default"),
        dir("services", vec![leaf("domain", "amazonaws.com")]),
    ]
}

fn mac_dir() -> Child {
    dir(
        MAC,
        vec![
            leaf("device-number", "0"),
            leaf("interface-id", "eni-mockedeni"),
            leaf("local-hostname", HOSTNAME),
            leaf("local-ipv4s", LOCAL_IPV4),
            leaf("mac", MAC),
            leaf("owner-id", ACCOUNT_ID),
            leaf("public-hostname", PUBLIC_HOSTNAME),
            leaf("public-ipv4s", PUBLIC_IPV4),
            leaf("security-group-ids", "sg-mockedsg"),
            leaf("security-groups", "default"),
            leaf("subnet-id", "subnet-mockedsubnet"),
            leaf("subnet-ipv4-cidr-block", "127.255.0.0/24"),
            leaf("vpc-id", "vpc-mockedvpc"),
            leaf("vpc-ipv4-cidr-block", "127.255.0.0/16"),
        ],
    )
}

fn dynamic(instance_id: &str) -> Vec<Child> {
    let document = json!({
        "accountId": ACCOUNT_ID,
        "architecture": "x86_64",
        "availabilityZone": ZONE,
        "billingProducts": null,
        "devpayProductCodes": null,
        "imageId": AMI_ID,
        "instanceId": instance_id,
        "instanceType": INSTANCE_TYPE,
        "kernelId": null,
        "marketplaceProductCodes": null,
        "pendingTime": "2016-11-19T16:32:11Z",
        "privateIp": LOCAL_IPV4,
        "ramdiskId": null,
        "region": REGION,
        "version": "2017-09-30",
    });
    // Serialising a `Value` cannot fail; fall back to the compact form rather than panic.
    let pretty = serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string());
    vec![
        dir("fws", vec![leaf("instance-monitoring", "enabled")]),
        dir(
            "instance-identity",
            vec![
                Child {
                    name: "document",
                    listed_as: None,
                    node: Node::Leaf(Bytes::from(pretty), JSON),
                },
                leaf(
                    "pkcs7",
                    "MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwGggCSA",
                ),
                leaf(
                    "rsa2048",
                    "MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwGggCSB",
                ),
                leaf(
                    "signature",
                    "bW9ja2VkIHNpZ25hdHVyZSwgbm90IHNpZ25lZCBieSBhbnlvbmU=",
                ),
            ],
        ),
    ]
}

#[cfg(test)]
#[path = "mock_tests.rs"]
mod tests;
