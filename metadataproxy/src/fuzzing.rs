//! Entry points for the fuzz targets (`fuzz/`) and the corpus replay test: one function per parser
//! of outside input, each feeding it arbitrary bytes and panicking when an invariant breaks.
//!
//! Not part of the API: built only with the `fuzzing` feature (the fuzz crate and this package's
//! tests turn it on) and for unit tests, never into the daemon.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::caller::Identity;
use crate::cgroup;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::containers::ContainerRole;
use crate::identity::mapping_file;
use crate::imds::path::{self, Category};
use crate::imds::token::{self, Tokens};
use crate::role::SessionKey;
use crate::role::{AccountMap, AccountRef, RoleArn, RoleSpec, SessionName, validate_external_id};

/// A fuzz target's entry point.
pub type Entry = fn(&[u8]);

/// Every fuzz target: its name (as in `fuzz/fuzz_targets/<name>.rs`) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("imds_path", imds_path),
    ("role_string", role_string),
    ("mapping_file", mapping_file),
    ("imds_token", imds_token),
    ("cgroup_path", cgroup_path),
    ("docker_settings", docker_settings),
    ("account_map", account_map),
    ("config_env", config_env),
    ("role_policy", role_policy),
];

/// A request path: parsing never panics, a parsed path is canonical, and no path the router
/// would forward upstream reaches an IAM route under any rewriting in [`upstream_views`].
pub fn imds_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = path::parse(raw) else {
        return;
    };
    assert_eq!(
        path::parse(parsed.as_path()).as_ref(),
        Ok(&parsed),
        "not canonical: {raw:?}"
    );
    if forwarded(&path::classify(&parsed)) {
        for view in upstream_views(parsed.as_path()) {
            assert!(
                !reaches_iam(&view),
                "{raw:?} is forwarded and an upstream could read it as {view:?}"
            );
        }
    }
}

/// Whether the router sends a path of this category to `METADATA_URL` in proxy mode.
pub fn forwarded(category: &Category) -> bool {
    matches!(
        category,
        Category::Root | Category::VersionRoot | Category::Other
    )
}

/// One rewriting an upstream HTTP server might apply to a path before routing it.
type Rewrite = fn(&str) -> String;

/// The rewritings [`upstream_views`] combines, in the order they are applied.
const REWRITES: &[Rewrite] = &[
    percent_decode,
    percent_decode,
    |p| p.replace('\\', "/"),
    |p| map_segments(p, |s| s.split(';').next().unwrap_or(s).to_owned()),
    |p| map_segments(p, trim_trailing_dots),
    collapse_slashes,
    remove_dot_segments,
    str::to_ascii_lowercase,
];

/// Every way an upstream could read `path`: each subset of [`REWRITES`] applied in order
/// (single and double percent-decoding, backslashes as slashes, `;…` parameters dropped,
/// trailing dots dropped as IIS does, repeated slashes collapsed, dot segments removed, case
/// folded).
pub fn upstream_views(path: &str) -> Vec<String> {
    (0_u32..1 << REWRITES.len())
        .map(|mask| {
            REWRITES
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold(path.to_owned(), |p, (_, rewrite)| rewrite(&p))
        })
        .collect()
}

/// Whether a path, read literally, names `meta-data/iam` or `meta-data/identity-credentials`
/// (any case, anywhere, empty segments skipped).
pub fn reaches_iam(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segs.windows(2).any(|w| {
        w[0].eq_ignore_ascii_case("meta-data")
            && (w[1].eq_ignore_ascii_case("iam")
                || w[1].eq_ignore_ascii_case("identity-credentials"))
    })
}

fn percent_decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn map_segments(p: &str, f: impl Fn(&str) -> String) -> String {
    p.split('/').map(f).collect::<Vec<_>>().join("/")
}

fn trim_trailing_dots(s: &str) -> String {
    if s.bytes().all(|b| b == b'.') {
        s.to_owned()
    } else {
        s.trim_end_matches(['.', ' ']).to_owned()
    }
}

fn collapse_slashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 section 5.2.4, on segments.
fn remove_dot_segments(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "." => {}
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

/// Role strings (`IAM_ROLE`, `DEFAULT_ROLE`, mapping values), ARNs, account references, session
/// names and external ids: parsing never panics and what parses prints back to itself.
pub fn role_string(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = RoleSpec::parse(s) {
        let again = RoleSpec::parse(&spec.to_string());
        assert_eq!(again.as_ref(), Ok(&spec), "{s:?} prints as {spec}");
    }
    if let Ok(arn) = RoleArn::parse(s) {
        assert_eq!(RoleArn::parse(&arn.to_string()).as_ref(), Ok(&arn), "{s:?}");
    }
    let _ = AccountRef::parse(s);
    let _ = validate_external_id(s);
    if let Some(name) = SessionName::sanitize(s) {
        let n = name.as_str();
        assert!((2..=64).contains(&n.len()), "session name {n:?} from {s:?}");
        assert_eq!(SessionName::sanitize(n).as_ref(), Some(&name), "{s:?}");
    }
}

/// `ROLE_MAPPING_FILE` contents: parsing never panics.
pub fn mapping_file(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mapping_file::parse(json);
}

/// `ROLE_POLICY_FILE` contents: parsing never panics, and a policy that parses never allows a
/// role that an applying rule denies, nor one no applying rule allows, for a set of callers and
/// roles built from the policy's own words.
pub fn role_policy(data: &[u8]) {
    let Ok(policy) = crate::policy::parse_bytes(data) else {
        return;
    };
    let mut words: Vec<String> = vec!["web".into(), "payments".into(), "x".into()];
    for rule in policy.rules() {
        for g in [
            &rule.selector.namespace,
            &rule.selector.pod,
            &rule.selector.container,
        ]
        .into_iter()
        .flatten()
        {
            words.push(g.as_str().replace(['*', '?'], "a"));
        }
    }
    words.truncate(8);
    let roles: Vec<RoleArn> = words
        .iter()
        .filter_map(|w| RoleArn::new(crate::role::Partition::Aws, "111111111111", "/", w).ok())
        .collect();
    for ns in &words {
        let workload = crate::identity::Workload {
            name: ns.clone(),
            image: ns.clone(),
            labels: HashMap::from([(crate::policy::NAMESPACE_LABEL.to_owned(), ns.clone())]),
            ..crate::identity::Workload::default()
        };
        let subject = crate::policy::Subject {
            assigned_by: crate::policy::AssignedBy::Workload,
            workload: Some(&workload),
            cgroup: Some("/system.slice/x.service"),
        };
        for arn in &roles {
            let text = arn.to_string();
            let decision = policy.decide(&subject, arn, &text);
            let applying = policy.rules().iter().filter(|r| r.applies(&subject, arn));
            let (mut denied, mut allowed) = (false, false);
            for r in applying {
                denied |= r.deny.iter().any(|p| p.matches(arn, &text));
                allowed |= r.allow.iter().any(|p| p.matches(arn, &text));
            }
            assert_eq!(decision.is_allowed(), allowed && !denied, "{decision:?}");
        }
    }
}

/// `IMDSv2`: the TTL header (before the first `\n`) and a presented token (after it). A TTL that
/// parses is in range; a made-up token is never valid, and a real one never for another caller.
pub fn imds_token(data: &[u8]) {
    let (ttl, presented) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(header) = http::HeaderValue::from_bytes(ttl)
        && let Ok(secs) = token::parse_ttl(Some(&header))
    {
        assert!((1..=token::MAX_TTL_SECS).contains(&secs), "{ttl:?}");
    }
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    let store = Tokens::with_key([7; 16], 0, Arc::new(clock.clone()));
    let (me, other) = (Identity::Cgroup(1), Identity::Cgroup(2));
    let issued = store.issue(&me, 1);
    // The header's bytes as they come (any case of the issued token's hex digits is that token).
    let result = store.validate(presented, &me);
    assert_eq!(
        result.is_ok(),
        presented.eq_ignore_ascii_case(issued.as_bytes()),
        "{presented:?}"
    );
    assert!(store.validate(&issued, &other).is_err(), "another caller");
    clock.advance(Duration::from_secs(1));
    assert!(store.validate(&issued, &me).is_err(), "expired");
}

/// cgroup v2 paths (from the kernel and the mapping file): parsing never panics, ancestors are
/// prefixes, a container found has a 64-hex id.
pub fn cgroup_path(data: &[u8]) {
    let Ok(p) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(found) = cgroup::container_of(p) {
        let id = format!("{found:?}");
        assert!(cgroup::is_container_path(p), "{p:?}: {id}");
    }
    for a in cgroup::ancestors(p).take(10_000) {
        assert!(p.starts_with(a), "{a:?} is not a prefix of {p:?}");
    }
}

/// A container's variables and labels, one per line: `L:key=value` is a label, `A:key=value` a
/// pod annotation, `K:Env:KEY` or `K:Labels:KEY` the `ROLE_SESSION_KEY`, anything else a
/// variable. Never panics; a role found prints as a role string that parses.
pub fn docker_settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut env, mut labels, mut pod, mut key) =
        (Vec::new(), HashMap::new(), HashMap::new(), None);
    for line in text.split('\n') {
        if let Some(label) = line.strip_prefix("L:") {
            let (k, v) = label.split_once('=').unwrap_or((label, ""));
            labels.insert(k.to_owned(), v.to_owned());
        } else if let Some(annotation) = line.strip_prefix("A:") {
            let (k, v) = annotation.split_once('=').unwrap_or((annotation, ""));
            pod.insert(k.to_owned(), v.to_owned());
        } else if let Some(k) = line.strip_prefix("K:Env:") {
            key = Some(SessionKey::Env(k.to_owned()));
        } else if let Some(k) = line.strip_prefix("K:Labels:") {
            key = Some(SessionKey::Label(k.to_owned()));
        } else {
            env.push(line.to_owned());
        }
    }
    if let ContainerRole::Role(a) =
        crate::containers::settings::container_role_in_pod(&env, &labels, &pod, key.as_ref())
    {
        assert!(RoleSpec::parse(&a.role.to_string()).is_ok(), "{a:?}");
    }
}

/// `AWS_ACCOUNT_MAP`: parsing never panics.
pub fn account_map(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let _ = AccountMap::parse_json(json);
}

/// Every setting at once, `NAME=value` per line, through the real configuration loader (the
/// environment is a map): never panics.
pub fn config_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = text
        .split('\n')
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let _: Result<Config, _> = Config::load(["metadataproxy"], &env);
}
