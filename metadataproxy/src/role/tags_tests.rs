//! Session tags and source identity: the settings' checks and each workload's values.

use super::*;

fn facts<'a>(labels: &'a HashMap<String, String>, env: &'a [String]) -> WorkloadFacts<'a> {
    WorkloadFacts {
        name: "k8s_app_api-7d9_payments",
        image: "registry.example/api:1.2",
        labels,
        env,
    }
}

fn config(tags: &str, transitive: &str, source: Option<&str>) -> TagsConfig {
    let tags = TagsConfig::parse_tags(tags).unwrap();
    let transitive = TagsConfig::parse_transitive(transitive, &tags).unwrap();
    TagsConfig {
        tags,
        transitive,
        source_identity: source.map(|s| WorkloadField::parse(s).unwrap()),
    }
}

fn pod_labels() -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.namespace".into(), "payments".into()),
        ("io.kubernetes.pod.name".into(), "api-7d9".into()),
        (
            "io.kubernetes.pod.uid".into(),
            "4f1c2b7e-8d0a-4c4e-9e57-0c2a7f0d1e2b".into(),
        ),
        ("team".into(), "billing & payments".into()),
    ])
}

#[test]
fn every_source_gives_its_value() {
    let c = config(
        "kubernetes-namespace=Namespace,kubernetes-pod-name=PodName,kubernetes-pod-uid=PodUid,container=Name,image=Image,team=Labels:team,env=Env:DEPLOY_ENV,missing=Labels:none",
        "kubernetes-namespace,TEAM",
        Some("PodName"),
    );
    let labels = pod_labels();
    let env = vec![
        "DEPLOY_ENV=prod".to_owned(),
        "DEPLOY_ENV=staging".to_owned(),
    ];
    let ctx = c.context_for(&facts(&labels, &env)).unwrap();
    let tags: Vec<(&str, &str)> = ctx
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        tags,
        [
            ("kubernetes-namespace", "payments"),
            ("kubernetes-pod-name", "api-7d9"),
            ("kubernetes-pod-uid", "4f1c2b7e-8d0a-4c4e-9e57-0c2a7f0d1e2b"),
            ("container", "k8s_app_api-7d9_payments"),
            ("image", "registry.example/api:1.2"),
            // `&` is not a tag character.
            ("team", "billing _ payments"),
            // The last of repeated variables, as Docker keeps it.
            ("env", "staging"),
        ]
    );
    // Transitive keys are spelled as in SESSION_TAGS, whatever their case in the setting.
    assert_eq!(ctx.transitive, ["kubernetes-namespace", "team"]);
    assert_eq!(ctx.source_identity.as_deref(), Some("api-7d9"));
    assert_eq!(
        ctx.to_string(),
        "kubernetes-namespace=payments,kubernetes-pod-name=api-7d9,kubernetes-pod-uid=4f1c2b7e-8d0a-4c4e-9e57-0c2a7f0d1e2b,container=k8s_app_api-7d9_payments,image=registry.example/api:1.2,team=billing _ payments,env=staging,source_identity=api-7d9"
    );
}

#[test]
fn a_workload_without_the_values_carries_only_what_it_has() {
    let c = config("ns=Namespace,pod=PodName", "ns", Some("Labels:nothing"));
    let labels = HashMap::new();
    assert_eq!(c.context_for(&facts(&labels, &[])), None);
    let labels = HashMap::from([("io.kubernetes.pod.name".into(), "p1".into())]);
    let ctx = c.context_for(&facts(&labels, &[])).unwrap();
    assert_eq!(ctx.tags, [("pod".to_owned(), "p1".to_owned())]);
    // `ns` is transitive, but this workload has no `ns` tag: it is not sent.
    assert!(ctx.transitive.is_empty());
    assert_eq!(ctx.source_identity, None);
    assert_eq!(
        TagsConfig::default().context_for(&facts(&labels, &[])),
        None
    );
}

#[test]
fn values_are_made_to_fit_sts() {
    assert_eq!(tag_value("café au lait"), "café au lait");
    assert_eq!(tag_value("a;b|c\"d"), "a_b_c_d");
    assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
    assert_eq!(tag_value(&"é".repeat(300)).chars().count(), 256);
    assert_eq!(source_identity("web-1").as_deref(), Some("web-1"));
    assert_eq!(
        source_identity("team/web:v1").as_deref(),
        Some("team_web_v1")
    );
    assert_eq!(source_identity("x"), None);
    assert_eq!(source_identity(&"y".repeat(80)).map(|s| s.len()), Some(64));
    assert_eq!(source_identity("名前").as_deref(), Some("__"));
}

#[test]
fn settings_sts_would_refuse_are_refused_at_start() {
    let bad_tags = [
        ("ns", "`ns` is not KEY=SOURCE"),
        ("=Name", "tag key ``: STS takes 1 to 128 characters"),
        ("aws:ns=Namespace", "the prefix aws: is reserved"),
        ("AWS:ns=Namespace", "the prefix aws: is reserved"),
        ("a;b=Name", "STS allows only letters"),
        ("ns=Namespace,NS=PodName", "tag key `NS` is given twice"),
        ("ns=Nmespace", "`Nmespace` is not Name, Image"),
        ("ns=Labels:", "`Labels:` is not Name"),
        (
            "key=Env:AWS_SECRET_ACCESS_KEY",
            "looks like a secret (its name contains SECRET)",
        ),
        ("t=Env:GITHUB_TOKEN", "contains TOKEN"),
        ("t=Env:db_password", "contains PASSWORD"),
        ("t=Env:IAM_EXTERNAL_ID", "contains EXTERNAL_ID"),
    ];
    for (text, want) in bad_tags {
        let err = TagsConfig::parse_tags(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    let long = format!("{}=Name", "k".repeat(129));
    assert!(TagsConfig::parse_tags(&long).is_err());
    let many: Vec<String> = (0..51).map(|i| format!("t{i}=Name")).collect();
    assert_eq!(
        TagsConfig::parse_tags(&many.join(",")),
        Err(TagsError::TooMany(51))
    );
    let tags = TagsConfig::parse_tags("ns=Namespace").unwrap();
    assert_eq!(
        TagsConfig::parse_transitive("ns,pod", &tags),
        Err(TagsError::NotATag("pod".into()))
    );
    assert!(WorkloadField::parse("Env:API_KEY").is_err());
    assert_eq!(
        WorkloadField::parse("Env:TEAM"),
        Ok(WorkloadField::Env("TEAM".into()))
    );
    assert_eq!(
        WorkloadField::parse("Labels:a.b").unwrap().to_string(),
        "Labels:a.b"
    );
}

#[test]
fn empty_entries_are_ignored() {
    let tags = TagsConfig::parse_tags(" ns = Namespace , ,pod=PodName,").unwrap();
    assert_eq!(
        tags,
        [
            TagSpec {
                key: "ns".into(),
                from: WorkloadField::Namespace
            },
            TagSpec {
                key: "pod".into(),
                from: WorkloadField::PodName
            }
        ]
    );
}
