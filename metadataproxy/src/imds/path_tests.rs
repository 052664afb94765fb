//! Tests for path parsing and classification: spellings real clients send and spellings attackers try.

use super::*;

fn cat(raw: &str) -> Result<Category<'_>, PathError> {
    parse(raw).map(|p| classify(&p))
}

fn creds(role: &str) -> Category<'_> {
    Category::IamCredentials(role)
}

fn check(table: &[(&str, Result<Category, PathError>)]) {
    for (raw, want) in table {
        assert_eq!(&cat(raw), want, "path {raw:?}");
    }
}

#[test]
fn routes_clients_use() {
    use Category::*;
    check(&[
        // Routes real SDKs use.
        ("/", Ok(Root)),
        ("/latest", Ok(VersionRoot)),
        ("/latest/", Ok(VersionRoot)),
        ("/2021-03-23/", Ok(VersionRoot)),
        ("/latest/api/token", Ok(Token)),
        ("/2021-03-23/api/token", Ok(Token)),
        ("/latest/API/Token", Ok(Token)),
        ("/latest/meta-data/iam", Ok(IamListing)),
        ("/latest/meta-data/iam/", Ok(IamListing)),
        ("/latest/meta-data/iam/info", Ok(IamInfo)),
        ("/latest/meta-data/iam/info/", Ok(IamInfo)),
        (
            "/latest/meta-data/iam/security-credentials/",
            Ok(IamCredentialsList),
        ),
        (
            "/latest/meta-data/iam/security-credentials",
            Ok(IamCredentialsList),
        ),
        (
            "/latest/meta-data/iam/security-credentials/role",
            Ok(creds("role")),
        ),
        (
            "/latest/meta-data/iam/security-credentials/role/",
            Ok(creds("role")),
        ),
        (
            "/2012-01-12/meta-data/iam/security-credentials/r",
            Ok(creds("r")),
        ),
        ("/2024-04-11/meta-data/iam/info", Ok(IamInfo)),
        ("/latest/meta-data/placement/region", Ok(Other)),
        ("/latest/meta-data/placement/availability-zone/", Ok(Other)),
        ("/latest/dynamic/instance-identity/document", Ok(Other)),
        ("/latest/user-data", Ok(Other)),
    ]);
}

#[test]
fn only_api_then_token_is_the_token_route() {
    use Category::*;
    // Each word alone, in the other place or with more after it, is an ordinary path (forwarded
    // or mocked, never a token PUT): mutation testing found the pair's `&&` untested.
    check(&[
        ("/latest/api/token", Ok(Token)),
        ("/latest/api/tokens", Ok(Other)),
        ("/latest/api/x", Ok(Other)),
        ("/latest/x/token", Ok(Other)),
        ("/latest/token/api", Ok(Other)),
        ("/latest/api/token/x", Ok(Other)),
        ("/latest/api", Ok(Other)),
    ]);
}

#[test]
fn iam_spellings_are_never_other() {
    use Category::*;
    check(&[
        // IAM in other letter cases, places, or versions: never forwarded, never served.
        (
            "/latest/Meta-Data/IAM/security-credentials/role",
            Ok(IamOther),
        ),
        ("/latest/meta-data/IAM/info", Ok(IamOther)),
        ("/latest/META-DATA/iam/", Ok(IamOther)),
        ("/latest/meta-data/iam/Security-Credentials/", Ok(IamOther)),
        ("/LATEST/meta-data/iam/security-credentials/", Ok(IamOther)),
        ("/meta-data/iam/security-credentials/role", Ok(IamOther)),
        ("/meta-data/iam", Ok(IamOther)),
        ("/foo/meta-data/iam/info", Ok(IamOther)),
        (
            "/latest/meta-data/iam/security-credentials/role/extra",
            Ok(IamOther),
        ),
        ("/latest/meta-data/iam/unknown", Ok(IamOther)),
        ("/latest/meta-data/iam;x/info", Ok(IamOther)),
        ("/latest/meta-data;x/iam/info", Ok(IamOther)),
        ("/2009-04-04/meta-data/iam/info", Ok(IamOther)),
        ("/latest/latest/meta-data/iam/info", Ok(IamOther)),
        // Host identity credentials: always refused, any case.
        (
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            Ok(HostIdentityCredentials),
        ),
        (
            "/latest/Meta-Data/Identity-Credentials/ec2/info",
            Ok(HostIdentityCredentials),
        ),
        (
            "/meta-data/identity-credentials/",
            Ok(HostIdentityCredentials),
        ),
        // Dot segments and their encodings.
        (
            "/latest/meta-data/iam/../iam/security-credentials/host",
            Err(PathError::DotSegment),
        ),
        ("/latest/meta-data/./iam/info", Err(PathError::DotSegment)),
        ("/latest/..", Err(PathError::DotSegment)),
        ("/..", Err(PathError::DotSegment)),
        ("/.", Err(PathError::DotSegment)),
        (
            "/latest/meta-data/../meta-data/",
            Err(PathError::DotSegment),
        ),
        (
            "/latest/meta-data/%2e%2e/iam/info",
            Err(PathError::PercentEncoded),
        ),
        (
            "/latest/meta-data/%2E%2E/iam/info",
            Err(PathError::PercentEncoded),
        ),
        (
            "/latest/meta-data%2fiam%2finfo",
            Err(PathError::PercentEncoded),
        ),
        (
            "/latest/meta-data/%69am/info",
            Err(PathError::PercentEncoded),
        ),
        ("/latest/meta-data/%", Err(PathError::PercentEncoded)),
        // Empty segments.
        ("//", Err(PathError::EmptySegment)),
        ("//latest/meta-data/iam/info", Err(PathError::EmptySegment)),
        ("/latest//meta-data/iam/info", Err(PathError::EmptySegment)),
        ("/latest/meta-data/iam//info", Err(PathError::EmptySegment)),
        ("/latest/meta-data//", Err(PathError::EmptySegment)),
        // Bytes no client sends.
        (
            "/latest/meta-data/iam\\..\\iam/info",
            Err(PathError::ForbiddenByte(b'\\')),
        ),
        ("/latest\\meta-data", Err(PathError::ForbiddenByte(b'\\'))),
        ("/latest/meta data", Err(PathError::ForbiddenByte(b' '))),
        ("/latest/meta-data\t", Err(PathError::ForbiddenByte(b'\t'))),
        ("/latest/meta-data\0", Err(PathError::ForbiddenByte(0))),
        (
            "/latest/meta-data\r\n",
            Err(PathError::ForbiddenByte(b'\r')),
        ),
        (
            "/latest/m\u{e9}ta-data",
            Err(PathError::ForbiddenByte(0xc3)),
        ),
        ("/latest/meta-data?x", Err(PathError::ForbiddenByte(b'?'))),
        ("/latest/meta-data#x", Err(PathError::ForbiddenByte(b'#'))),
        ("/latest/<x>", Err(PathError::ForbiddenByte(b'<'))),
        // Shape.
        ("", Err(PathError::NotAbsolute)),
        ("latest/meta-data", Err(PathError::NotAbsolute)),
        ("http://x/latest", Err(PathError::NotAbsolute)),
        ("*", Err(PathError::NotAbsolute)),
    ]);
}

#[test]
fn length_limit_is_exact() {
    let at_limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert!(parse(&at_limit).is_ok());
    let over = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(parse(&over), Err(PathError::TooLong));
}

#[test]
fn version_and_segments_are_split() {
    let table: &[(&str, Option<&str>, &[&str], bool)] = &[
        ("/", None, &[], false),
        ("/latest/", Some("latest"), &[], true),
        (
            "/2016-09-02/meta-data/mac",
            Some("2016-09-02"),
            &["meta-data", "mac"],
            false,
        ),
        ("/latest/meta-data/", Some("latest"), &["meta-data"], true),
        ("/meta-data/mac", None, &["meta-data", "mac"], false),
        ("/2016-9-02/x", None, &["2016-9-02", "x"], false),
        ("/Latest/x", None, &["Latest", "x"], false),
        ("/1.0/meta-data", None, &["1.0", "meta-data"], false),
    ];
    for (raw, version, segments, trailing) in table {
        let p = parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(p.version, *version, "{raw:?}");
        assert_eq!(p.segments().collect::<Vec<_>>(), *segments, "{raw:?}");
        assert_eq!(p.trailing_slash, *trailing, "{raw:?}");
        assert_eq!(p.as_path(), *raw, "canonical form of {raw:?}");
    }
}

/// Every letter-case spelling of `meta-data/iam` (and of `identity-credentials`), under every
/// prefix and suffix, must be caught before it could be mocked or forwarded.
#[test]
fn no_case_spelling_of_iam_escapes() {
    let prefixes = [
        "",
        "/latest",
        "/2020-10-27",
        "/LATEST",
        "/x",
        "/latest/latest",
    ];
    let suffixes = [
        "",
        "/",
        "/info",
        "/security-credentials",
        "/security-credentials/",
        "/security-credentials/host-role",
        "/SECURITY-CREDENTIALS/host-role/",
        "/a/b/c",
    ];
    let mut checked = 0;
    for meta in case_variants("meta-data", 64) {
        for tail in case_variants("iam", 8)
            .into_iter()
            .chain(case_variants("identity-credentials", 16))
        {
            for pre in prefixes {
                for suf in suffixes {
                    let raw = format!("{pre}/{meta}/{tail}{suf}");
                    let p = parse(&raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
                    let c = classify(&p);
                    assert!(
                        !matches!(
                            c,
                            Category::Other
                                | Category::Root
                                | Category::VersionRoot
                                | Category::Token
                        ),
                        "{raw:?} escaped IAM detection as {c:?}"
                    );
                    let exact =
                        meta == "meta-data" && tail == "iam" && pre != "/LATEST" && pre != "/x";
                    let served = matches!(
                        c,
                        Category::IamListing
                            | Category::IamInfo
                            | Category::IamCredentialsList
                            | Category::IamCredentials(_)
                    );
                    if served {
                        assert!(
                            exact,
                            "{raw:?} served locally as {c:?} despite inexact spelling"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "only {checked} spellings generated");
}

/// Up to `max` spellings of `word` with ASCII letters in mixed case, always including all-lower
/// and all-upper; deterministic so failures reproduce.
fn case_variants(word: &str, max: usize) -> Vec<String> {
    let letters: Vec<usize> = word
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .collect();
    let combos = 1_usize << letters.len().min(20);
    let step = (combos / max).max(1);
    let mut out: Vec<String> = (0..combos)
        .step_by(step)
        .map(|mask| {
            let mut bytes = word.as_bytes().to_vec();
            for (bit, &i) in letters.iter().enumerate() {
                if mask >> bit & 1 == 1 {
                    bytes[i] = bytes[i].to_ascii_uppercase();
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect();
    out.push(word.to_ascii_uppercase());
    out
}

/// Found by the normalisation property: a Tomcat-style upstream drops `;…` and then reads `..;`
/// as `..`, so `/latest/meta-data/x/..;/iam/info` was forwarded and could reach IAM.
#[test]
fn regression_dot_segment_with_path_parameter() {
    for raw in [
        "/latest/meta-data/x/..;/iam/info",
        "/latest/meta-data/x/..;x/iam/info",
        "/latest/meta-data/.;/iam/info",
        "/latest/meta-data/x/.../iam/info",
    ] {
        assert_eq!(parse(raw), Err(PathError::DotSegment), "{raw}");
    }
}

/// Found by the normalisation property: `meta-data/;x/iam` becomes `meta-data//iam`, then
/// `meta-data/iam`, on an upstream that drops parameters and collapses slashes.
#[test]
fn regression_parameter_only_segment() {
    for raw in ["/latest/meta-data/;x/iam/info", "/latest/meta-data/;/iam/"] {
        assert_eq!(parse(raw), Err(PathError::EmptySegment), "{raw}");
    }
}

/// Found by the normalisation property: IIS drops trailing dots, so `iam.` is `iam` there.
#[test]
fn regression_trailing_dot_on_iam_segment() {
    for raw in [
        "/latest/meta-data/iam./security-credentials/host",
        "/latest/meta-data../iam/info",
        "/latest/meta-data/iam.;x/info",
        "/latest/meta-data/identity-credentials./ec2/info",
    ] {
        let got = parse(raw).map(|p| classify(&p));
        assert!(
            matches!(
                got,
                Ok(Category::IamOther | Category::HostIdentityCredentials)
            ),
            "{raw}: {got:?}"
        );
    }
}
