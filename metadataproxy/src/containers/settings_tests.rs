//! Tables of container environments and labels and what they entitle the container to.

use super::*;

/// The role of a container outside Kubernetes.
fn container_role(
    env: &[String],
    labels: &HashMap<String, String>,
    session_key: Option<&SessionKey>,
) -> ContainerRole {
    container_role_in_pod(env, labels, &HashMap::new(), session_key)
}

fn env(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|e| (*e).to_owned()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Environment entries, labels, and the expected summary.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
/// `ROLE_SESSION_KEY`, environment entries, labels, and the expected summary.
type SessionCase<'a> = (
    &'a SessionKey,
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    &'a str,
);

/// A readable summary: `role|external id|session`, `default|session`, or `invalid: reason`.
fn summary(role: &ContainerRole) -> String {
    match role {
        ContainerRole::Role(a) => format!(
            "{}|{}|{}",
            a.role,
            a.external_id.as_deref().unwrap_or("-"),
            a.session_name.as_ref().map_or("-", SessionName::as_str)
        ),
        ContainerRole::Default(s) => {
            format!(
                "default|{}",
                s.name.as_ref().map_or("-", SessionName::as_str)
            )
        }
        ContainerRole::Invalid(e) => format!("invalid: {e}"),
    }
}

#[test]
fn environment_and_labels_table() {
    let none: &[(&str, &str)] = &[];
    let cases: &[Case] = &[
        (&[], none, "default|-"),
        (&["PATH=/bin", "HOME=/root"], none, "default|-"),
        (&["IAM_ROLE=web"], none, "web|-|-"),
        (&["IAM_ROLE= web "], none, "web|-|-"),
        (&["IAM_ROLE=web@123456789012"], none, "web@123456789012|-|-"),
        (
            &["IAM_ROLE=arn:aws:iam::123456789012:role/team/web"],
            none,
            "arn:aws:iam::123456789012:role/team/web|-|-",
        ),
        (
            &["IAM_ROLE=web", "IAM_EXTERNAL_ID=ext-123"],
            none,
            "web|ext-123|-",
        ),
        (&["IAM_ROLE=web", "IAM_EXTERNAL_ID="], none, "web|-|-"),
        // Lyft: an empty IAM_ROLE is no role.
        (&["IAM_ROLE="], none, "default|-"),
        // Docker keeps the last of repeated variables.
        (&["IAM_ROLE=old", "IAM_ROLE=new"], none, "new|-|-"),
        (
            &["IAM_ROLE"],
            none,
            "invalid: environment entry `IAM_ROLE` has no `=` and no value",
        ),
        (
            &["IAM_ROLE=web", "IAM_EXTERNAL_ID"],
            none,
            "invalid: environment entry `IAM_EXTERNAL_ID` has no `=` and no value",
        ),
        (&["IAM_ROLE=no spaces allowed"], none, "invalid: IAM_ROLE: "),
        (
            &["IAM_ROLE=web", "IAM_EXTERNAL_ID=x"],
            none,
            "invalid: IAM_EXTERNAL_ID: ",
        ),
        // The label, when the variable is absent.
        (&[], &[("metadataproxy.role", "lbl")], "lbl|-|-"),
        (
            &[],
            &[
                ("metadataproxy.role", "lbl"),
                ("metadataproxy.external-id", "lbl-ext"),
            ],
            "lbl|lbl-ext|-",
        ),
        (&[], &[("metadataproxy.role", "")], "default|-"),
        (
            &[],
            &[("metadataproxy.role", "bad role")],
            "invalid: metadataproxy.role: ",
        ),
        // The variable wins; the external id comes from the same place as the role.
        (
            &["IAM_ROLE=env", "IAM_EXTERNAL_ID=env-ext"],
            &[
                ("metadataproxy.role", "lbl"),
                ("metadataproxy.external-id", "lbl-ext"),
            ],
            "env|env-ext|-",
        ),
        (
            &["IAM_ROLE=env"],
            &[("metadataproxy.external-id", "lbl-ext")],
            "env|-|-",
        ),
        (
            &["IAM_EXTERNAL_ID=env-ext"],
            &[("metadataproxy.role", "lbl")],
            "lbl|-|-",
        ),
        // An external id without a role is ignored: the container gets DEFAULT_ROLE.
        (&["IAM_EXTERNAL_ID=env-ext"], none, "default|-"),
    ];
    for (e, l, want) in cases {
        let got = summary(&container_role(&env(e), &labels(l), None));
        assert!(
            got == *want || (want.ends_with(": ") && got.starts_with(want)),
            "env {e:?} labels {l:?}: got {got:?}, want {want:?}"
        );
    }
}

#[test]
fn session_key_from_env_or_label_is_sanitised() {
    let by_env = SessionKey::Env("SESSION".into());
    let by_label = SessionKey::Label("com.example.session".into());
    let cases: &[SessionCase] = &[
        (
            &by_env,
            &["IAM_ROLE=web", "SESSION=alice"],
            &[],
            "web|-|alice",
        ),
        (
            &by_env,
            &["IAM_ROLE=web", "SESSION=team/web:v1"],
            &[],
            "web|-|team_web_v1",
        ),
        (&by_env, &["IAM_ROLE=web", "SESSION=a"], &[], "web|-|-"),
        (&by_env, &["IAM_ROLE=web", "SESSION"], &[], "web|-|-"),
        (
            &by_env,
            &["IAM_ROLE=web"],
            &[("com.example.session", "x1")],
            "web|-|-",
        ),
        (&by_env, &["SESSION=bob"], &[], "default|bob"),
        (
            &by_label,
            &["IAM_ROLE=web"],
            &[("com.example.session", "my service")],
            "web|-|my_service",
        ),
        (
            &by_label,
            &["IAM_ROLE=web", "com.example.session=zz"],
            &[],
            "web|-|-",
        ),
        (
            &by_label,
            &[],
            &[
                ("com.example.session", "carol"),
                ("metadataproxy.role", "r"),
            ],
            "r|-|carol",
        ),
    ];
    for (key, e, l, want) in cases {
        let got = summary(&container_role(&env(e), &labels(l), Some(key)));
        assert_eq!(got, *want, "key {key:?} env {e:?} labels {l:?}");
    }
}

#[test]
fn answers_follow_the_role() {
    let role = container_role(&env(&["IAM_ROLE=web"]), &HashMap::new(), None);
    assert!(matches!(role.answer(), Answer::Role(a) if a.role.name() == "web"));
    let default = container_role(&[], &HashMap::new(), None);
    assert!(matches!(
        default.answer(),
        Answer::DefaultRole(crate::role::Session {
            name: None,
            context: None
        })
    ));
    let bad = container_role(&env(&["IAM_ROLE"]), &HashMap::new(), None);
    assert!(matches!(bad.answer(), Answer::Refused));
}

#[test]
fn errors_never_show_the_external_id() {
    let role = container_role(
        &env(&["IAM_ROLE=web", "IAM_EXTERNAL_ID=s3cr3t value"]),
        &HashMap::new(),
        None,
    );
    let text = format!("{role:?} {}", summary(&role));
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn label_shadowing_is_noticed() {
    let l = labels(&[("metadataproxy.role", "lbl")]);
    assert!(label_shadowed(&env(&["IAM_ROLE=env"]), &l));
    assert!(!label_shadowed(&env(&["IAM_ROLE=lbl"]), &l));
    assert!(!label_shadowed(&[], &l));
    assert!(!label_shadowed(&env(&["IAM_ROLE=env"]), &HashMap::new()));
}

/// Container environment, container labels, pod annotations, and the expected summary's start.
type PodCase<'a> = (
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    &'a HashMap<String, String>,
    &'a str,
);

#[test]
fn pod_annotation_is_the_role_of_containers_naming_none() {
    let none: &[(&str, &str)] = &[];
    let pod = labels(&[
        ("iam.amazonaws.com/role", "pod-role"),
        ("iam.amazonaws.com/external-id", "pod-ext"),
    ]);
    // (container env, container labels, pod annotations, expected)
    let cases: &[PodCase] = &[
        (&[], none, &pod, "pod-role|pod-ext|-"),
        // The container's own role wins, and the pod's external id never joins it.
        (&["IAM_ROLE=own"], none, &pod, "own|-|-"),
        (&[], &[("metadataproxy.role", "lbl")], &pod, "lbl|-|-"),
        (
            &[],
            none,
            &labels(&[("iam.amazonaws.com/role", "")]),
            "default|-",
        ),
        (
            &[],
            none,
            &labels(&[("iam.amazonaws.com/role", "r")]),
            "r|-|-",
        ),
        (
            &[],
            none,
            &labels(&[(
                "iam.amazonaws.com/role",
                "arn:aws:iam::123456789012:role/k8s/app",
            )]),
            "arn:aws:iam::123456789012:role/k8s/app|-|-",
        ),
        (
            &[],
            none,
            &labels(&[("iam.amazonaws.com/role", "not a role")]),
            "invalid: iam.amazonaws.com/role: ",
        ),
        (
            &["IAM_ROLE"],
            none,
            &pod,
            "invalid: environment entry `IAM_ROLE` has no `=` and no value",
        ),
    ];
    for (e, l, p, want) in cases {
        let got = summary(&container_role_in_pod(&env(e), &labels(l), p, None));
        assert!(
            got.starts_with(want),
            "env {e:?} labels {l:?}: got {got}, want {want}"
        );
    }
}
