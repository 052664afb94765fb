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
    /// The path contains `//`, or more than one trailing `/`.
    #[error("empty path segment")]
    EmptySegment,
    /// The path contains a `.` or `..` segment.
    #[error("dot segment in path")]
    DotSegment,
}

/// A validated, canonical IMDS request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsPath {
    /// The API version (`latest` or `YYYY-MM-DD`) when the first segment is one; else `None`.
    pub version: Option<String>,
    /// The segments after the version (all segments when `version` is `None`).
    pub segments: Vec<String>,
    /// Whether the path ended with a single `/`.
    pub trailing_slash: bool,
}

impl ImdsPath {
    /// Rebuilds the canonical path string, e.g. `/latest/meta-data/placement/`.
    pub fn as_path(&self) -> String {
        let mut out = String::from("/");
        out.push_str(&self.join());
        // The root is `/` whatever the flag says: there is no segment to put a slash after.
        if self.trailing_slash && out.len() > 1 {
            out.push('/');
        }
        out
    }

    /// Version (when known) and segments joined with `/`, without leading or trailing slash.
    fn join(&self) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(self.segments.len() + 1);
        if let Some(v) = &self.version {
            parts.push(v);
        }
        parts.extend(self.segments.iter().map(String::as_str));
        parts.join("/")
    }
}

/// What a path is, for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Category {
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
    IamCredentials(String),
    /// Anything else that touches `meta-data/iam` in any letter case: answered 404 locally.
    IamOther,
    /// `meta-data/identity-credentials/…`: the host's own credentials, always refused.
    HostIdentityCredentials,
    /// Everything else: mocked or forwarded.
    Other,
}

/// Validates a request path (query already split off) and splits it into version and segments.
pub fn parse(raw: &str) -> Result<ImdsPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    for &b in raw.as_bytes() {
        match b {
            b'%' => return Err(PathError::PercentEncoded),
            b if is_allowed(b) => {}
            b => return Err(PathError::ForbiddenByte(b)),
        }
    }
    if rest.is_empty() {
        return Ok(ImdsPath {
            version: None,
            segments: Vec::new(),
            trailing_slash: false,
        });
    }
    let (body, trailing_slash) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    let mut version = None;
    let mut segments = Vec::with_capacity(4);
    for (i, seg) in body.split('/').enumerate() {
        match seg {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            s if i == 0 && is_version(s) => version = Some(s.to_owned()),
            s => segments.push(s.to_owned()),
        }
    }
    Ok(ImdsPath {
        version,
        segments,
        trailing_slash,
    })
}

/// Bytes allowed in a path: RFC 3986 unreserved, sub-delims, `:`, `@` and `/`; never `%`.
fn is_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
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

/// Compares a segment to a lower-case keyword ignoring ASCII case and any `;…` suffix, so an
/// upstream that strips path parameters (`iam;x`) could not reach a route we did not recognise.
fn seg_is(seg: &str, keyword: &str) -> bool {
    // A byte search: `split(';')` cost more than the rest of routing (it runs on every segment).
    let stem = seg
        .as_bytes()
        .iter()
        .position(|&b| b == b';')
        .map_or(seg.as_bytes(), |i| &seg.as_bytes()[..i]);
    stem.eq_ignore_ascii_case(keyword.as_bytes())
}

/// Whether `meta-data` is immediately followed by `next` anywhere in the segments (version
/// included, since an unrecognised first segment is kept in `segments`).
fn has_pair(p: &ImdsPath, next: &str) -> bool {
    let mut after_meta_data = false;
    for seg in p.version.iter().chain(p.segments.iter()) {
        if after_meta_data && seg_is(seg, next) {
            return true;
        }
        after_meta_data = seg_is(seg, "meta-data");
    }
    false
}

/// Decides what a parsed path is. IAM detection ignores case; local IAM handlers only serve the
/// exact lower-case spelling under a known version, everything else IAM-like is `IamOther`.
pub fn classify(p: &ImdsPath) -> Category {
    if has_pair(p, "iam") {
        return classify_iam(p);
    }
    if has_pair(p, "identity-credentials") {
        return Category::HostIdentityCredentials;
    }
    let segs: Vec<&str> = p.segments.iter().map(String::as_str).collect();
    match (&p.version, segs.as_slice()) {
        (None, []) => Category::Root,
        (Some(_), []) => Category::VersionRoot,
        (Some(_), [api, token]) if seg_is(api, "api") && seg_is(token, "token") => Category::Token,
        _ => Category::Other,
    }
}

fn classify_iam(p: &ImdsPath) -> Category {
    let Some(version) = &p.version else {
        return Category::IamOther;
    };
    if version != "latest" && version.as_str() < FIRST_IAM_VERSION {
        return Category::IamOther;
    }
    let segs: Vec<&str> = p.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["meta-data", "iam"] => Category::IamListing,
        ["meta-data", "iam", "info"] => Category::IamInfo,
        ["meta-data", "iam", "security-credentials"] => Category::IamCredentialsList,
        ["meta-data", "iam", "security-credentials", role] => {
            Category::IamCredentials((*role).to_owned())
        }
        _ => Category::IamOther,
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
