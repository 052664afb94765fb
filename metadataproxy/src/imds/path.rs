//! Request-path normalisation and classification: the one place that decides what a path means.
//!
//! Everything downstream (IAM handlers, mock tree, passthrough) sees only an [`ImdsPath`] that was
//! refused unless it was already canonical: no percent-encoding, no dot or empty segments, no
//! backslashes. Refusing instead of normalising means no later decoder (ours or the upstream's)
//! can turn an innocent-looking path into `meta-data/iam/…`.

use thiserror::Error;

/// Longest request path we accept, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// The first API version that served IAM credentials; older dated versions get 404 for IAM paths.
const FIRST_IAM_VERSION: &str = "2012-01-12";

/// Why a request path was refused. The HTTP layer answers all of them with 400.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The path contains `%`: no IMDS client percent-encodes, so any encoding is refused.
    #[error("percent-encoded path")]
    PercentEncoded,
    /// The path contains a byte outside the allowed set (backslash, space, control, non-ASCII…).
    #[error("forbidden byte 0x{0:02x} in path")]
    ForbiddenByte(u8),
    /// The path contains `//`, more than one trailing `/`, or a segment that is only a `;…`
    /// parameter (which an upstream stripping parameters would turn into `//`).
    #[error("empty path segment")]
    EmptySegment,
    /// The path contains a segment made only of dots (`.`, `..`, `...`), also before a `;…`
    /// parameter (`..;x`, which Tomcat-style upstreams treat as `..`).
    #[error("dot segment in path")]
    DotSegment,
}

/// A validated, canonical IMDS request path, borrowed from the request (routing allocates
/// nothing). Canonical means it is exactly the path received: [`ImdsPath::as_path`] is the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImdsPath<'a> {
    /// The whole path, as received.
    raw: &'a str,
    /// Every segment (version included) joined with `/`: no leading or trailing slash.
    body: &'a str,
    /// The segments after the version (all of `body` when `version` is `None`).
    rest: &'a str,
    /// The API version (`latest` or `YYYY-MM-DD`) when the first segment is one; else `None`.
    pub version: Option<&'a str>,
    /// Whether the path ended with a single `/`.
    pub trailing_slash: bool,
    /// No `.` and no `;` anywhere: a segment is then its own stem, without trailing dots.
    plain: bool,
}

impl<'a> ImdsPath<'a> {
    /// The canonical path string, e.g. `/latest/meta-data/placement/`: the path as received,
    /// since a path that is not canonical is refused.
    pub fn as_path(&self) -> &'a str {
        self.raw
    }

    /// The segments after the version (all segments when `version` is `None`).
    pub fn segments(&self) -> Segments<'a> {
        Segments::of(self.rest)
    }

    /// Every segment, version included.
    fn all_segments(&self) -> Segments<'a> {
        Segments::of(self.body)
    }

    /// [`seg_is`] for one of this path's segments.
    fn seg_is(&self, seg: &str, keyword: &str) -> bool {
        if self.plain {
            seg.eq_ignore_ascii_case(keyword)
        } else {
            seg_is(seg, keyword)
        }
    }
}

/// The segments of a path, in order (see [`ImdsPath::segments`]).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Segments<'a> {
    fn of(joined: &'a str) -> Self {
        Self {
            rest: (!joined.is_empty()).then_some(joined),
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let Some(i) = rest.bytes().position(|b| b == b'/') else {
            self.rest = None;
            return Some(rest);
        };
        self.rest = Some(&rest[i + 1..]);
        Some(&rest[..i])
    }
}

impl std::iter::FusedIterator for Segments<'_> {}

/// What a path is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category<'a> {
    /// `/`: the version listing.
    Root,
    /// `/<version>/`.
    VersionRoot,
    /// `/<version>/api/token`: the `IMDSv2` token route, answered locally.
    Token,
    /// `/<version>/meta-data/iam` (with or without trailing slash).
    IamListing,
    /// `/<version>/meta-data/iam/info`.
    IamInfo,
    /// `/<version>/meta-data/iam/security-credentials/`.
    IamCredentialsList,
    /// `/<version>/meta-data/iam/security-credentials/<role>`: the role name asked for.
    IamCredentials(&'a str),
    /// Anything else that touches `meta-data/iam` in any letter case: answered 404 locally.
    IamOther,
    /// `meta-data/identity-credentials/…`: the host's own credentials, always refused.
    HostIdentityCredentials,
    /// Everything else: mocked or forwarded.
    Other,
}

/// [`FLAGS`] of a `.`: a segment made only of these is a dot segment.
const DOT: u8 = 1;
/// [`FLAGS`] of a `;`: it starts a segment's path parameters.
const SEMICOLON: u8 = 2;
/// [`FLAGS`] of a `%`: percent-encoding, refused.
const PERCENT: u8 = 4;
/// [`FLAGS`] of a byte outside RFC 3986 unreserved, sub-delims, `:`, `@` and `/` (backslash,
/// space, controls, `?`, `#`, non-ASCII…), refused.
const FORBIDDEN: u8 = 8;

/// What each byte is, so validating a path is one table load per byte.
static FLAGS: [u8; 256] = {
    let mut table = [FORBIDDEN; 256];
    let allowed = b"-._~!$&'()*+,;=:@/";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = 0;
        i += 1;
    }
    let mut c = 0;
    while c < 26 {
        table[b'a' as usize + c] = 0;
        table[b'A' as usize + c] = 0;
        if c < 10 {
            table[b'0' as usize + c] = 0;
        }
        c += 1;
    }
    table[b'.' as usize] = DOT;
    table[b';' as usize] = SEMICOLON;
    table[b'%' as usize] = PERCENT;
    table
};

/// Validates a request path (query already split off) and splits it into version and segments.
///
/// Refused, in this order: longer than [`MAX_PATH_LEN`]; not starting with `/`; the first
/// percent sign or forbidden byte; the first empty or dot segment (judged without its `;…`
/// parameters, as an upstream that drops them would see it).
pub fn parse(raw: &str) -> Result<ImdsPath<'_>, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    // One pass: the byte classes seen, and whether two slashes meet (an empty segment).
    let (mut seen, mut slashes, mut prev) = (0, 0_u8, 0_u8);
    for &b in raw.as_bytes() {
        seen |= FLAGS[usize::from(b)];
        slashes |= u8::from(prev == b'/') & u8::from(b == b'/');
        prev = b;
    }
    let double_slash = slashes != 0;
    if seen & (PERCENT | FORBIDDEN) != 0 {
        return Err(first_bad_byte(raw));
    }
    let plain = seen & (DOT | SEMICOLON) == 0;
    if rest.is_empty() {
        return Ok(ImdsPath {
            raw,
            body: "",
            rest: "",
            version: None,
            trailing_slash: false,
            plain,
        });
    }
    let (body, trailing_slash) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    if body.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if plain {
        // `raw` is `/`, the body, and at most one more `/`: an empty segment anywhere in the
        // body (first, last or inner) is two slashes meeting in `raw`; and no dot, no dot
        // segment.
        if double_slash {
            return Err(PathError::EmptySegment);
        }
    } else {
        for seg in Segments::of(body) {
            if seg.is_empty() {
                return Err(PathError::EmptySegment);
            }
            // Judge the segment as an upstream that drops `;…` path parameters would see it.
            let stem = seg.split(';').next().unwrap_or(seg);
            if stem.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if stem.bytes().all(|b| b == b'.') {
                return Err(PathError::DotSegment);
            }
        }
    }
    let (first, after) = match body.bytes().position(|b| b == b'/') {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => (body, ""),
    };
    let (version, rest) = if is_version(first) {
        (Some(first), after)
    } else {
        (None, body)
    };
    Ok(ImdsPath {
        raw,
        body,
        rest,
        version,
        trailing_slash,
        plain,
    })
}

/// [`parse`] and [`classify`] together, with the two paths nearly every request takes — the
/// token route and one role's credentials, spelled as every SDK spells them — recognised by
/// comparison first. The result is exactly what the general parse would give
/// (`path_props.rs` checks it on hostile paths).
pub fn route(raw: &str) -> Result<(ImdsPath<'_>, Category<'_>), PathError> {
    if let Some(known) = common(raw) {
        return Ok(known);
    }
    let p = parse(raw)?;
    Ok((p, classify(&p)))
}

/// `/latest/api/token` and `/latest/meta-data/iam/security-credentials/<role>` where the role
/// name is made only of letters, digits and `_+=,@-` (no `.`, so the path is plain); else `None`.
fn common(raw: &str) -> Option<(ImdsPath<'_>, Category<'_>)> {
    const TOKEN: &str = "/latest/api/token";
    const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";
    const VERSION: std::ops::Range<usize> = 1..7;
    let category = if raw == TOKEN {
        Category::Token
    } else {
        let role = raw.strip_prefix(CREDENTIALS)?;
        let plain_role = |b: u8| b.is_ascii_alphanumeric() || b"_+=,@-".contains(&b);
        if role.is_empty() || raw.len() > MAX_PATH_LEN || !role.bytes().all(plain_role) {
            return None;
        }
        Category::IamCredentials(role)
    };
    let path = ImdsPath {
        raw,
        body: raw.get(1..)?,
        rest: raw.get(VERSION.end + 1..)?,
        version: raw.get(VERSION),
        trailing_slash: false,
        plain: true,
    };
    Some((path, category))
}

/// The error for the first percent sign or forbidden byte of `raw`.
fn first_bad_byte(raw: &str) -> PathError {
    raw.bytes()
        .find_map(|b| match FLAGS[usize::from(b)] {
            PERCENT => Some(PathError::PercentEncoded),
            FORBIDDEN => Some(PathError::ForbiddenByte(b)),
            _ => None,
        })
        .unwrap_or(PathError::ForbiddenByte(0))
}

/// `latest` or a date shaped `YYYY-MM-DD`.
fn is_version(s: &str) -> bool {
    if s == "latest" {
        return true;
    }
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Compares a segment to a lower-case keyword ignoring ASCII case, any `;…` suffix and trailing
/// dots, so an upstream that strips path parameters (`iam;x`) or trailing dots (`iam.`, as IIS
/// does) could not reach a route we did not recognise.
fn seg_is(seg: &str, keyword: &str) -> bool {
    let seg = seg.as_bytes();
    // The stem is never longer than the segment.
    if seg.len() < keyword.len() {
        return false;
    }
    let mut stem = match seg.iter().position(|&b| b == b';') {
        Some(i) => &seg[..i],
        None => seg,
    };
    while let [rest @ .., b'.'] = stem {
        stem = rest;
    }
    stem.eq_ignore_ascii_case(keyword.as_bytes())
}

/// Decides what a parsed path is. IAM detection ignores case; local IAM handlers only serve the
/// exact lower-case spelling under a known version, everything else IAM-like is `IamOther`.
pub fn classify<'a>(p: &ImdsPath<'a>) -> Category<'a> {
    // Whether `meta-data` is immediately followed by `iam` (or `identity-credentials`) anywhere
    // in the segments, version included, since an unrecognised first segment is kept there.
    // The IAM routes' own spelling first: it is such a pair.
    if p.rest
        .strip_prefix("meta-data/iam")
        .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    {
        return classify_iam(p);
    }
    let mut host_identity = false;
    let mut after_meta_data = false;
    for seg in p.all_segments() {
        if after_meta_data {
            if p.seg_is(seg, "iam") {
                return classify_iam(p);
            }
            host_identity |= p.seg_is(seg, "identity-credentials");
        }
        after_meta_data = p.seg_is(seg, "meta-data");
    }
    if host_identity {
        return Category::HostIdentityCredentials;
    }
    let mut segs = p.segments();
    match (p.version, segs.next(), segs.next(), segs.next()) {
        (None, None, ..) => Category::Root,
        (Some(_), None, ..) => Category::VersionRoot,
        (Some(_), Some(api), Some(token), None)
            if p.seg_is(api, "api") && p.seg_is(token, "token") =>
        {
            Category::Token
        }
        _ => Category::Other,
    }
}

fn classify_iam<'a>(p: &ImdsPath<'a>) -> Category<'a> {
    let Some(version) = p.version else {
        return Category::IamOther;
    };
    if version != "latest" && version < FIRST_IAM_VERSION {
        return Category::IamOther;
    }
    // Only the exact lower-case spelling is served; segments are never empty, so a role name
    // after `security-credentials/` is one non-empty segment when it holds no `/`.
    let Some(tail) = p.rest.strip_prefix("meta-data/iam") else {
        return Category::IamOther;
    };
    match tail {
        "" => Category::IamListing,
        "/info" => Category::IamInfo,
        "/security-credentials" => Category::IamCredentialsList,
        _ => match tail.strip_prefix("/security-credentials/") {
            Some(role) if !role.contains('/') => Category::IamCredentials(role),
            _ => Category::IamOther,
        },
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "path_props.rs"]
mod props;
