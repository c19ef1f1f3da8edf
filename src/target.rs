//! Request targets: which forms a balanced request may take, and how its
//! path is resolved before it joins an endpoint's base path.
//!
//! One rule set for every front end (RFC 9112 §3.2 forms, RFC 3986 §5.2.4
//! dot segments):
//!
//! - **origin form** (`/users/42?full=1`): path and query are kept; the path
//!   is resolved and goes under the endpoint's base path. An empty path is
//!   `/`.
//! - **absolute form** (`http://anything/users/42`): the scheme and
//!   authority are replaced by the endpoint's, then as origin form.
//! - **user info** (`http://user:pw@backend/x`): never sent in the URL. As
//!   reqwest's own `RequestBuilder` does, the percent-decoded user and
//!   password become an `Authorization: Basic` header, unless the request
//!   already has an `Authorization` header, which wins (the URL's
//!   credentials are then dropped). The same on every front end: through
//!   reqwest's builder they arrive as that header already.
//! - **authority form** (`host:port`, as `CONNECT` uses; `http::Uri` also
//!   reads a bare word such as `x` this way) and **asterisk form** (`*`):
//!   refused, since the balancer chooses the server and the base path.
//! - **dot segments**: `.` and `..` (also spelled `%2e`, `%2E`) are removed
//!   as RFC 3986 says. A `..` that would climb above the request's root,
//!   and so out of the endpoint's base path, refuses the request; so does
//!   one that would climb out if the server decoded `%2F`, `%5C` or `\` as
//!   separators. Nothing is sent for a refused request.
//! - **fragments** are never sent (`http::Uri` drops them when parsed;
//!   reqwest does not send them).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use percent_encoding::percent_decode_str;

/// Why a request's target was refused before anything was sent; carried by
/// [`Error::InvalidTarget`](crate::Error::InvalidTarget).
///
/// ```
/// use tower_lb::TargetRefusal;
///
/// let refusal = TargetRefusal::LeavesBasePath;
/// assert!(refusal.to_string().contains("base path"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetRefusal {
    /// A `..` segment would take the path above the endpoint's base path.
    LeavesBasePath,
    /// The target names a server only (`host:port`), not a resource.
    AuthorityForm,
    /// The target is `*` (the server as a whole), not a resource.
    AsteriskForm,
    /// The path does not start with `/`.
    RelativePath,
}

impl fmt::Display for TargetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetRefusal::LeavesBasePath => "the path climbs out of the endpoint's base path",
            TargetRefusal::AuthorityForm => {
                "an authority-form target (host:port) names no resource to balance"
            }
            TargetRefusal::AsteriskForm => {
                "an asterisk-form target (*) names no resource to balance"
            }
            TargetRefusal::RelativePath => "the path must start with /",
        })
    }
}

/// The request path with its dot segments removed, as it goes under the
/// endpoint's base path: `None` when it stays as it is (the common request,
/// with no `.`, `%` or `\`, allocates nothing).
#[inline]
pub(crate) fn resolve_path(path: &str) -> Result<Option<String>, TargetRefusal> {
    match path.as_bytes() {
        [b'/', rest @ ..] if !rest.iter().any(|&b| matches!(b, b'.' | b'%' | b'\\')) => Ok(None),
        _ => resolve_unusual_path(path),
    }
}

/// [`resolve_path`] for a path that is empty, not absolute, or has a
/// `.`, `%` or `\`: out of line, so that the common path stays short.
#[cold]
fn resolve_unusual_path(path: &str) -> Result<Option<String>, TargetRefusal> {
    if path.is_empty() {
        return Ok(Some("/".to_owned()));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(if path == "*" {
            TargetRefusal::AsteriskForm
        } else {
            TargetRefusal::RelativePath
        });
    };
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(None);
    }
    if climbs_out_when_decoded(rest) {
        return Err(TargetRefusal::LeavesBasePath);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut changed = false;
    for (i, segment) in segments.into_iter().enumerate() {
        let dots = dots(segment);
        changed |= dots > 0;
        match dots {
            0 => kept.push(segment),
            1 if i == last => kept.push(""),
            1 => {}
            _ => {
                if kept.pop().is_none() {
                    return Err(TargetRefusal::LeavesBasePath);
                }
                if i == last {
                    kept.push("");
                }
            }
        }
    }
    if !changed {
        // Nothing removed: `.` or `%` appeared only inside names.
        return Ok(None);
    }
    let mut resolved = String::with_capacity(path.len());
    for segment in kept {
        resolved.push('/');
        resolved.push_str(segment);
    }
    if resolved.is_empty() {
        resolved.push('/');
    }
    Ok(Some(resolved))
}

/// 1 for a `.` segment, 2 for `..`, 0 otherwise; `%2e` and `%2E` count as
/// dots.
fn dots(segment: &str) -> u8 {
    let mut count = 0u8;
    let mut bytes = segment.as_bytes();
    while !bytes.is_empty() {
        let rest = match bytes {
            [b'.', rest @ ..] => rest,
            [b'%', b'2', b'e' | b'E', rest @ ..] => rest,
            _ => return 0,
        };
        count += 1;
        if count > 2 {
            return 0;
        }
        bytes = rest;
    }
    count
}

/// Moves `depth` by one segment; true when a `..` finds nothing to take
/// away.
fn close(segment: &str, depth: &mut usize) -> bool {
    match dots(segment) {
        0 if !segment.is_empty() => *depth += 1,
        2 if *depth == 0 => return true,
        2 => *depth -= 1,
        _ => {}
    }
    false
}

/// Whether the path would climb above its root for a server that decodes
/// `%2F` and `%5C` and reads `\` as a separator: each `..` must follow a
/// name it takes away.
fn climbs_out_when_decoded(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let separator = match bytes.get(i..) {
            None | Some([]) => Some(0),
            Some([b'/' | b'\\', ..]) => Some(1),
            Some([b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..]) => Some(3),
            _ => None,
        };
        match separator {
            Some(width) => {
                if close(&rest[start..i], &mut depth) {
                    return true;
                }
                if width == 0 {
                    break;
                }
                i += width;
                start = i;
            }
            None => i += 1,
        }
    }
    false
}

/// The `Authorization` value for the user info of a request URL, as
/// reqwest's `RequestBuilder` makes it: `Basic` and the base64 of
/// `user:password` (`user:` with no password), each percent-decoded; marked
/// sensitive, so that it is left out of `Debug` output. `None` when the URL
/// names no user and no password.
pub(crate) fn basic_credentials(user: &str, password: Option<&str>) -> Option<HeaderValue> {
    if user.is_empty() && password.is_none() {
        return None;
    }
    let mut plain: Vec<u8> = percent_decode_str(user).collect();
    plain.push(b':');
    plain.extend(percent_decode_str(password.unwrap_or("")));
    let mut value = String::from("Basic ");
    STANDARD.encode_string(&plain, &mut value);
    // Base64 and "Basic " are visible ASCII: always a valid value.
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Applies the user-info rule to a routed request's headers: `credentials`
/// (from [`basic_credentials`]) become its `Authorization` header unless it
/// has one already, which wins.
pub(crate) fn authorize(headers: &mut HeaderMap, credentials: Option<HeaderValue>) {
    if let Some(credentials) = credentials {
        if !headers.contains_key(AUTHORIZATION) {
            headers.insert(AUTHORIZATION, credentials);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_become_basic_credentials_percent_decoded() {
        let value = |user, password| {
            basic_credentials(user, password).map(|v| v.to_str().unwrap().to_owned())
        };
        // RFC 7617's example: Aladdin / open sesame.
        assert_eq!(
            value("Aladdin", Some("open%20sesame")).as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        assert_eq!(value("user", None).as_deref(), Some("Basic dXNlcjo="));
        assert_eq!(value("", Some("pw")).as_deref(), Some("Basic OnB3"));
        assert_eq!(value("", None), None);
        // A stray `%` stays; non-UTF-8 bytes are sent as they are.
        assert_eq!(value("a%zz%4", None).as_deref(), Some("Basic YSV6eiU0Og=="));
        assert_eq!(value("%FF%41", None).as_deref(), Some("Basic /0E6"));
        assert!(basic_credentials("u", Some("p")).unwrap().is_sensitive());
    }

    #[test]
    fn an_authorization_header_already_there_wins() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        authorize(&mut headers, basic_credentials("u", Some("p")));
        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(headers[AUTHORIZATION], "Bearer t");
        let mut headers = HeaderMap::new();
        authorize(&mut headers, basic_credentials("u", Some("p")));
        assert_eq!(headers[AUTHORIZATION], "Basic dTpw");
    }

    fn resolved(path: &str) -> Result<String, TargetRefusal> {
        resolve_path(path).map(|resolved| resolved.unwrap_or_else(|| path.to_owned()))
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        // RFC 3986 §5.2.4 and §5.4 examples, anchored at the root.
        for (path, expected) in [
            ("", "/"),
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/b/../../c/", "/c/"),
            ("/v1.2/file.txt", "/v1.2/file.txt"),
            ("/a/.../b", "/a/.../b"),
            ("/a/%41", "/a/%41"),
            ("/a//../b", "/a/b"),
        ] {
            assert_eq!(resolved(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn climbing_out_is_refused_however_it_is_spelled() {
        for path in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E./x",
            "/./../x",
            "/..%2fx",
            "/..%2Fadmin",
            "/a%2f..%2f..%2fx",
            "/..\\x",
            "/a/..%5c..%5cx",
        ] {
            assert_eq!(resolved(path), Err(TargetRefusal::LeavesBasePath), "{path}");
        }
    }

    #[test]
    fn other_forms_are_refused() {
        assert_eq!(resolved("*"), Err(TargetRefusal::AsteriskForm));
        assert_eq!(resolved("x/y"), Err(TargetRefusal::RelativePath));
    }

    #[test]
    fn plain_paths_stay_as_they_are() {
        assert_eq!(resolve_path("/users/42"), Ok(None));
        assert_eq!(resolve_path("/v1.2/x"), Ok(None));
    }
}
