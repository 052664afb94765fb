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

/// How [`parse`] treats each byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// RFC 3986 unreserved, sub-delims, `:` and `@`, except the three below.
    Plain,
    /// `.`: a segment made only of these is a dot segment.
    Dot,
    /// `;`: starts a segment's path parameters.
    Semicolon,
    /// `/`: ends a segment.
    Slash,
    /// `%`: percent-encoding, refused.
    Percent,
    /// Anything else (backslash, space, controls, `?`, `#`, non-ASCII…), refused.
    Forbidden,
}

/// The class of every byte, so validation is one table load per byte.
static CLASSES: [Class; 256] = {
    let mut table = [Class::Forbidden; 256];
    let mut b = 0;
    while b < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "b < 256")]
        let byte = b as u8;
        if byte.is_ascii_alphanumeric() {
            table[b] = Class::Plain;
        }
        b += 1;
    }
    let plain = b"-_~!$&'()*+,=:@";
    let mut i = 0;
    while i < plain.len() {
        table[plain[i] as usize] = Class::Plain;
        i += 1;
    }
    table[b'.' as usize] = Class::Dot;
    table[b';' as usize] = Class::Semicolon;
    table[b'/' as usize] = Class::Slash;
    table[b'%' as usize] = Class::Percent;
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
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // A segment error is remembered, not returned at once: any bad byte takes precedence.
    let mut segment_error = None;
    let mut first_slash = None;
    // The segment being read: where it starts, where its `;…` starts, whether it is dots so far.
    let mut start = 1;
    let mut params: Option<usize> = None;
    let mut dots_only = true;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match CLASSES[usize::from(b)] {
            Class::Plain => dots_only &= params.is_some(),
            Class::Dot => {}
            Class::Semicolon => {
                params.get_or_insert(i);
            }
            Class::Slash => {
                if segment_error.is_none() {
                    segment_error = check_segment(params.unwrap_or(i) - start, dots_only);
                }
                first_slash.get_or_insert(i);
                (start, params, dots_only) = (i + 1, None, true);
            }
            Class::Percent => return Err(PathError::PercentEncoded),
            Class::Forbidden => return Err(PathError::ForbiddenByte(b)),
        }
    }
    let trailing_slash = bytes.len() > 1 && bytes[bytes.len() - 1] == b'/';
    if bytes.len() > 1 && !trailing_slash && segment_error.is_none() {
        segment_error = check_segment(params.unwrap_or(bytes.len()) - start, dots_only);
    }
    if let Some(e) = segment_error {
        return Err(e);
    }
    let body = &raw[1..raw.len() - usize::from(trailing_slash)];
    // `first_slash` indexes `raw`; a slash that is not the trailing one splits `body`.
    let (first, after) = match first_slash {
        Some(i) if i <= body.len() => body.split_at(i - 1),
        _ => (body, "/"),
    };
    let after = &after[1..];
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
    })
}

/// A segment's error, from the length of its stem (the part before any `;`) and whether the
/// stem is only dots.
fn check_segment(stem_len: usize, dots_only: bool) -> Option<PathError> {
    if stem_len == 0 {
        Some(PathError::EmptySegment)
    } else if dots_only {
        Some(PathError::DotSegment)
    } else {
        None
    }
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
    let mut host_identity = false;
    let mut after_meta_data = false;
    for seg in p.all_segments() {
        if after_meta_data {
            if seg_is(seg, "iam") {
                return classify_iam(p);
            }
            host_identity |= seg_is(seg, "identity-credentials");
        }
        after_meta_data = seg_is(seg, "meta-data");
    }
    if host_identity {
        return Category::HostIdentityCredentials;
    }
    let mut segs = p.segments();
    match (p.version, segs.next(), segs.next(), segs.next()) {
        (None, None, ..) => Category::Root,
        (Some(_), None, ..) => Category::VersionRoot,
        (Some(_), Some(api), Some(token), None) if seg_is(api, "api") && seg_is(token, "token") => {
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
    let mut segs = p.segments();
    let found = [
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
    ];
    match found {
        [Some("meta-data"), Some("iam"), None, ..] => Category::IamListing,
        [Some("meta-data"), Some("iam"), Some("info"), None, _] => Category::IamInfo,
        [
            Some("meta-data"),
            Some("iam"),
            Some("security-credentials"),
            None,
            _,
        ] => Category::IamCredentialsList,
        [
            Some("meta-data"),
            Some("iam"),
            Some("security-credentials"),
            Some(role),
            None,
        ] => Category::IamCredentials(role),
        _ => Category::IamOther,
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "path_props.rs"]
mod props;
