//! The role policy: its format, its errors, and what it decides.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn arn(text: &str) -> RoleArn {
    RoleArn::parse(text).unwrap()
}

fn pod(namespace: &str, name: &str) -> Workload {
    Workload {
        id: "c".repeat(64),
        name: format!("k8s_app_{name}"),
        image: "registry.example/app:1".into(),
        labels: HashMap::from([
            (NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
            (POD_NAME_LABEL.to_owned(), name.to_owned()),
        ]),
    }
}

fn container(name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        id: "d".repeat(64),
        name: name.into(),
        image: "busybox:latest".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn subject<'a>(w: Option<&'a Workload>, cgroup: Option<&'static str>) -> Subject<'a> {
    Subject {
        assigned_by: AssignedBy::Workload,
        workload: w,
        cgroup,
    }
}

fn decide<'p>(p: &'p Policy, s: &Subject<'_>, role: &str) -> Decision<'p> {
    let a = arn(role);
    p.decide(s, &a, role)
}

const EXAMPLE: &str = r#"{
  "version": 1,
  "rules": [
    {"name": "payments", "match": {"namespace": "payments"},
     "allow": ["payments-*", "arn:aws:iam::*:role/shared/reader"], "accounts": ["111111111111"]},
    {"name": "web", "match": {"labels": {"com.docker.compose.project": "web"}}, "allow": ["web-*"]},
    {"name": "batch", "match": {"cgroup": "/system.slice/batch.service/"}, "allow": ["team/*"]},
    {"name": "no-admin", "match": {}, "deny": ["*admin*"]},
    {"name": "operators", "match": {"assigned_by": ["mapping_file", "default_role"]}, "allow": ["*"]}
  ]
}"#;

#[test]
fn namespace_rules_allow_their_roles_in_their_accounts_only() {
    let p = parse(EXAMPLE).unwrap();
    let w = pod("payments", "api-7d9");
    let s = subject(Some(&w), None);
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::111111111111:role/payments-api"),
        Decision::Allowed("payments")
    );
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::111111111111:role/shared/reader"),
        Decision::Allowed("payments")
    );
    // The same name in another account: the rule does not apply.
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::222222222222:role/payments-api"),
        Decision::NotAllowed(1)
    );
    // Another namespace's role.
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::111111111111:role/web-frontend"),
        Decision::NotAllowed(2)
    );
    // Another namespace asking for payments' role.
    let other = pod("web", "x");
    assert_eq!(
        decide(
            &p,
            &subject(Some(&other), None),
            "arn:aws:iam::111111111111:role/payments-api"
        ),
        Decision::NotAllowed(1)
    );
}

#[test]
fn a_deny_wins_over_any_allow() {
    let p = parse(EXAMPLE).unwrap();
    let w = pod("payments", "api");
    assert_eq!(
        decide(
            &p,
            &subject(Some(&w), None),
            "arn:aws:iam::111111111111:role/payments-admin"
        ),
        Decision::Denied("no-admin")
    );
    // Even for roles operators assign.
    let s = Subject {
        assigned_by: AssignedBy::MappingFile,
        workload: None,
        cgroup: None,
    };
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::111111111111:role/admin"),
        Decision::Denied("no-admin")
    );
    assert_eq!(
        decide(&p, &s, "arn:aws:iam::111111111111:role/anything"),
        Decision::Allowed("operators")
    );
}

#[test]
fn labels_cgroups_and_names_select_callers() {
    let p = parse(EXAMPLE).unwrap();
    let web = container("web-1", &[("com.docker.compose.project", "web")]);
    let role = "arn:aws:iam::333333333333:role/web-frontend";
    assert!(decide(&p, &subject(Some(&web), None), role).is_allowed());
    let other = container("web-1", &[("com.docker.compose.project", "webx")]);
    assert!(!decide(&p, &subject(Some(&other), None), role).is_allowed());
    let unlabelled = container("web-1", &[]);
    assert!(!decide(&p, &subject(Some(&unlabelled), None), role).is_allowed());

    let team = "arn:aws:iam::333333333333:role/team/etl";
    for (cgroup, allowed) in [
        ("/system.slice/batch.service", true),
        ("/system.slice/batch.service/worker-3", true),
        ("/system.slice/batch.servicex", false),
        ("/system.slice", false),
    ] {
        let s = Subject {
            assigned_by: AssignedBy::Workload,
            workload: None,
            cgroup: Some(cgroup),
        };
        assert_eq!(decide(&p, &s, team).is_allowed(), allowed, "{cgroup}");
    }
    // `team/*` is a path pattern: a role named like it without the path does not match.
    let s = subject(None, Some("/system.slice/batch.service"));
    assert!(!decide(&p, &s, "arn:aws:iam::333333333333:role/team-etl").is_allowed());
    // No record of the cgroup: a cgroup rule does not apply.
    assert!(!decide(&p, &subject(None, None), team).is_allowed());
}

#[test]
fn container_image_and_pod_globs() {
    let p = parse(
        r#"{"version": 1, "rules": [
            {"match": {"container": "etl-*", "image": "registry.example/*"}, "allow": ["etl"]},
            {"name": "pods", "match": {"namespace": "team-?", "pod": "job-*"}, "allow": ["jobs"]}
        ]}"#,
    )
    .unwrap();
    let mut w = container("etl-3", &[]);
    w.image = "registry.example/etl:2".into();
    let etl = "arn:aws:iam::111111111111:role/etl";
    assert_eq!(
        decide(&p, &subject(Some(&w), None), etl),
        Decision::Allowed("rules[0]")
    );
    w.image = "docker.io/etl:2".into();
    assert!(!decide(&p, &subject(Some(&w), None), etl).is_allowed());
    let jobs = "arn:aws:iam::111111111111:role/jobs";
    assert!(decide(&p, &subject(Some(&pod("team-a", "job-1")), None), jobs).is_allowed());
    assert!(!decide(&p, &subject(Some(&pod("team-ab", "job-1")), None), jobs).is_allowed());
    assert!(!decide(&p, &subject(Some(&pod("team-a", "web")), None), jobs).is_allowed());
}

#[test]
fn an_empty_policy_allows_nothing() {
    let p = parse(r#"{"version": 1, "rules": []}"#).unwrap();
    let d = decide(
        &p,
        &subject(None, None),
        "arn:aws:iam::111111111111:role/web",
    );
    assert_eq!(d, Decision::NotAllowed(0));
    assert_eq!(d.rule(), "(none)");
    assert_eq!(d.to_string(), "no rule applies to this caller and role");
}

#[test]
fn decisions_explain_themselves() {
    assert_eq!(
        Decision::Denied("no-admin").to_string(),
        "denied by rule `no-admin`"
    );
    assert_eq!(
        Decision::NotAllowed(1).to_string(),
        "1 rule applies to this caller, none allows the role"
    );
    assert_eq!(
        Decision::NotAllowed(3).to_string(),
        "3 rules apply to this caller, none allows the role"
    );
    assert_eq!(Decision::Allowed("web").rule(), "web");
}

/// Every error names where it is: line and column for the shape, the rule for the meaning.
#[test]
fn errors_say_where_and_what() {
    let cases: &[(&str, &str)] = &[
        ("{", "line 1, column 1: EOF while parsing an object"),
        (
            r#"{"version": 1, "rules": [{"match": {}, "alow": ["x"]}]}"#,
            "line 1, column 45: unknown field `alow`",
        ),
        (
            "{\"version\": 1,\n \"rules\": [{\"match\": {\"namespce\": \"a\"}, \"allow\": [\"x\"]}]}",
            "line 2, column 32: unknown field `namespce`",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {}, "allow": ["x"], "accounts": ["12345"]}]}"#,
            "`12345` is not an account id (12 digits)",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {"cgroup": "system.slice"}, "allow": ["x"]}]}"#,
            "cgroup `system.slice` must be a path starting with `/`",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {"cgroup": "/a/../b"}, "allow": ["x"]}]}"#,
            "has a `.` or `..` component",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {}, "allow": [""]}]}"#,
            "empty pattern",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {}, "allow": ["/web"]}]}"#,
            "without a leading `/`",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {}, "allow": ["arn:aws:s3:::bucket"]}]}"#,
            "is not a role ARN pattern",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {"assigned_by": ["someone"]}, "allow": ["x"]}]}"#,
            "unknown variant `someone`",
        ),
        (
            r#"{"version": 1, "rules": [{"allow": ["x"]}]}"#,
            "missing field `match`",
        ),
        (r#"{"rules": []}"#, "missing field `version`"),
        (
            r#"{"version": 2, "rules": []}"#,
            "has invalid rules: version 2 is not supported",
        ),
        (
            r#"{"version": 1, "rules": [{"name": "a", "match": {}}]}"#,
            "rule `a` neither allows nor denies a role",
        ),
        (
            r#"{"version": 1, "rules": [{"name": "a", "match": {}, "allow": ["x"]}, {"name": "a", "match": {}, "deny": ["y"]}]}"#,
            "rule `a` is named twice",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {}, "allow": ["x"], "accounts": []}]}"#,
            "rule `rules[0]` lists no account",
        ),
        (
            r#"{"version": 1, "rules": [{"match": {"assigned_by": []}, "allow": ["x"]}]}"#,
            "lists nothing in `assigned_by`",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).expect_err(text).to_string();
        assert!(err.contains(want), "{text}\n  gave: {err}\n  want: {want}");
        assert!(err.starts_with("role policy "), "{err}");
    }
}

#[test]
fn syntax_errors_carry_their_position() {
    let err =
        parse("{\"version\": 1,\n\"rules\": [\n  {\"match\": {}, \"allow\": [1]}]}").unwrap_err();
    let PolicyError::Syntax { line, column, .. } = err else {
        panic!("{err}")
    };
    assert_eq!((line, column), (3, 27));
}

#[test]
fn a_file_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, "{\"version\": 1, \"rules\": [}").unwrap();
    let err = PolicyFile::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "role policy file `{}` is invalid at line 1",
            path.display()
        )),
        "{err}"
    );
    let missing = PolicyFile::load(dir.path().join("none.json"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("cannot read role policy file"),
        "{missing}"
    );
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(PolicyFile::load(&path).unwrap().current().rules().len(), 5);
}

#[test]
fn a_broken_reload_keeps_the_last_good_policy() {
    use crate::watched::ReloadOutcome;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, EXAMPLE).unwrap();
    let file = PolicyFile::load(&path).unwrap();
    let w = pod("payments", "api");
    let role = "arn:aws:iam::111111111111:role/payments-api";
    let allowed = |f: &PolicyFile| {
        let p = f.current();
        decide(&p, &subject(Some(&w), None), role).is_allowed()
    };
    assert!(allowed(&file));
    // Replaced by rename (a new inode), broken.
    let tmp = dir.path().join("policy.json.new");
    std::fs::write(
        &tmp,
        "{\"version\": 1, \"rules\": [{\"match\": {}, \"allo\": []}]}",
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(matches!(
        file.reload_if_changed(),
        ReloadOutcome::Failed(PolicyError::Syntax { line: 1, .. })
    ));
    assert!(file.last_check_failed());
    assert!(allowed(&file), "the last good policy stays in force");
    // Fixed: the new policy (which no longer allows payments) is in force.
    std::fs::write(&tmp, r#"{"version": 1, "rules": []}"#).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(matches!(
        file.reload_if_changed(),
        ReloadOutcome::Reloaded { entries: 0 }
    ));
    assert!(!allowed(&file));
}

#[test]
fn the_gate_without_a_policy_allows_everything() {
    let gate = Gate::default();
    assert!(!gate.is_on());
    let a = arn("arn:aws:iam::111111111111:role/admin");
    assert_eq!(gate.check(&subject(None, None), &a, "x"), Ok(()));
}

#[test]
fn the_gate_explains_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, EXAMPLE).unwrap();
    let gate = Gate::new(Some(std::sync::Arc::new(PolicyFile::load(&path).unwrap())));
    assert!(gate.is_on());
    let w = pod("payments", "api");
    let text = "arn:aws:iam::111111111111:role/payments-admin";
    let refused = gate
        .check(&subject(Some(&w), None), &arn(text), text)
        .unwrap_err();
    assert_eq!(refused.rule, "no-admin");
    assert_eq!(refused.why, "denied by rule `no-admin`");
    let text = "arn:aws:iam::111111111111:role/payments-api";
    assert_eq!(
        gate.check(&subject(Some(&w), None), &arn(text), text),
        Ok(())
    );
}

fn role_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "web",
        "web-admin",
        "payments-api",
        "admin",
        "etl",
        "reader",
        "x",
    ])
    .prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["/", "/team/", "/shared/", "/team/admin/"]).prop_map(str::to_owned)
}

fn account() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["111111111111", "222222222222"]).prop_map(str::to_owned)
}

fn pattern() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "*",
        "web*",
        "*admin*",
        "team/*",
        "?eb",
        "payments-*",
        "etl",
        "arn:aws:iam::111111111111:role/*",
        "arn:aws:iam::*:role/shared/*",
    ])
    .prop_map(str::to_owned)
}

fn rule() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(prop::sample::select(vec!["payments", "web", "p*"])),
        prop::collection::vec(pattern(), 0..3),
        prop::collection::vec(pattern(), 0..2),
        prop::option::of(prop::collection::vec(account(), 1..2)),
    )
        .prop_filter("a rule allows or denies something", |(_, a, d, _)| {
            !a.is_empty() || !d.is_empty()
        })
        .prop_map(|(ns, allow, deny, accounts)| {
            let mut selector = serde_json::Map::new();
            if let Some(ns) = ns {
                selector.insert("namespace".into(), ns.into());
            }
            let mut r = serde_json::json!({"match": selector, "allow": allow, "deny": deny});
            if let Some(a) = accounts {
                r["accounts"] = a.into();
            }
            r
        })
}

proptest! {
    /// The policy's promise, checked against a reading of it written independently: a role is
    /// allowed exactly when no applying rule denies it and one allows it.
    #[test]
    fn allowed_exactly_when_an_applying_rule_allows_and_none_denies(
        rules in prop::collection::vec(rule(), 0..5),
        namespace in prop::sample::select(vec!["payments", "web", "other"]),
        account in account(),
        path in path(),
        name in role_name(),
    ) {
        let text = serde_json::json!({"version": 1, "rules": rules}).to_string();
        let policy = parse(&text).unwrap();
        let role = format!("arn:aws:iam::{account}:role{path}{name}");
        let w = pod(namespace, "p");
        let decision = decide(&policy, &subject(Some(&w), None), &role);
        let resource = format!("{}{name}", path.trim_start_matches('/'));
        let matches = |p: &serde_json::Value| {
            let p = p.as_str().unwrap();
            let target = if p.starts_with("arn:") { role.as_str() } else { resource.as_str() };
            wildmatch::WildMatch::new(p).matches(target)
        };
        let applying: Vec<&serde_json::Value> = rules.iter().filter(|r| {
            r["match"].get("namespace").is_none_or(|ns| wildmatch::WildMatch::new(ns.as_str().unwrap()).matches(namespace))
                && r.get("accounts").is_none_or(|a| a.as_array().unwrap().iter().any(|id| id == account.as_str()))
        }).collect();
        let denied = applying.iter().any(|r| r["deny"].as_array().unwrap().iter().any(matches));
        let allowed = applying.iter().any(|r| r["allow"].as_array().unwrap().iter().any(matches));
        prop_assert_eq!(decision.is_allowed(), allowed && !denied, "{} for {} in {}: {:?}", text, role, namespace, decision);
    }
}
