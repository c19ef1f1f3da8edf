//! Request keys: what a consistent-hash policy hashes to place a request, so
//! that the same key reaches the same endpoint from every client instance.
//!
//! The hash is fixed and documented ([`key_hash`]: XXH3-64 with seed 0), so
//! two processes running this crate agree on where a key lives. Key values
//! are hashed as soon as they are read and never stored, logged or shown.

mod cookie;
mod learned;
#[cfg(feature = "cookies")]
mod site;

use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, HeaderValue, Method};

pub(crate) use learned::LearnedHomes;
#[cfg(feature = "cookies")]
pub(crate) use site::SiteCookies;

/// The stable hash of a key: XXH3-64 with seed 0 over the key's bytes.
///
/// Part of the crate's compatibility promise: it does not change between
/// versions, so every process agrees on where a key lives.
///
/// ```
/// assert_eq!(tower_lb::key_hash(b"user-42"), tower_lb::key_hash(b"user-42"));
/// assert_ne!(tower_lb::key_hash(b"user-42"), tower_lb::key_hash(b"user-43"));
/// ```
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// An explicit key for one request: the request goes to the endpoint this
/// key hashes to.
///
/// Put it in an `http::Request`'s `Extensions` (or a `reqwest-middleware`
/// request's, with `with_extension`). A `reqwest::Request` keeps its
/// extensions private, so for one the key travels in the
/// [`SessionKey::HEADER`] header instead ([`SessionKey::attach`]); a
/// balancer whose policy reads session keys reads it there and removes it
/// before the request leaves (one whose policy reads none leaves the
/// request's headers as they are).
///
/// Only the key's hash is kept, so the value cannot leak through `Debug`,
/// logs, stats or that header.
///
/// ```
/// use tower_lb::SessionKey;
///
/// let mut request = http::Request::get("/cart").body(())?;
/// request.extensions_mut().insert(SessionKey::new("user-42"));
/// assert!(!format!("{:?}", SessionKey::new("user-42")).contains("user-42"));
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    hash: u64,
}

impl SessionKey {
    /// The header that carries a session key on requests that have no
    /// extensions to hold it (`reqwest::Request`): its value is the key's
    /// hash in 16 hexadecimal digits. Read by [`RequestKey::session`] and
    /// removed before the request is sent by a balancer whose policy reads
    /// it.
    pub const HEADER: &'static str = "x-tower-lb-session-key";

    /// The value of [`SessionKey::HEADER`] for this key.
    ///
    /// ```
    /// use tower_lb::SessionKey;
    ///
    /// let client = reqwest::Client::new();
    /// let request = client
    ///     .get("http://backend/cart")
    ///     .header(SessionKey::HEADER, SessionKey::new("user-42").header_value())
    ///     .build()?;
    /// # Ok::<(), reqwest::Error>(())
    /// ```
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from(HexDigest(self.hash))
    }

    /// Sets this key on a `reqwest::Request`, in [`SessionKey::HEADER`].
    ///
    /// ```
    /// use tower_lb::SessionKey;
    ///
    /// let mut request = reqwest::Request::new(http::Method::GET, "http://backend/cart".parse()?);
    /// SessionKey::new("user-42").attach(&mut request);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "reqwest")]
    pub fn attach(self, request: &mut reqwest::Request) {
        request
            .headers_mut()
            .insert(Self::HEADER, self.header_value());
    }

    /// The key a [`SessionKey::HEADER`] value carries.
    fn from_header_value(value: &HeaderValue) -> Option<Self> {
        let text = value.to_str().ok()?;
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16)
            .ok()
            .map(|hash| SessionKey { hash })
    }

    /// A key from any bytes: a user id, a session id, a tenant name.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        SessionKey {
            hash: key_hash(key.as_ref()),
        }
    }

    /// The key's [`key_hash`]: what the hashing policies place. Named so
    /// that it does not shadow [`Hash::hash`](std::hash::Hash::hash).
    pub fn digest(&self) -> u64 {
        self.hash
    }
}

/// A hash in 16 lowercase hexadecimal digits.
struct HexDigest(u64);

impl From<HexDigest> for HeaderValue {
    fn from(digest: HexDigest) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 16];
        for (i, byte) in text.iter_mut().enumerate() {
            *byte = DIGITS[((digest.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        // Sixteen hexadecimal digits are always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey(hash={:016x})", self.hash)
    }
}

/// The parts of a request a key source may read.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: Option<&'a Extensions>,
    /// Cookies the balancer's cookie jar holds for this request.
    pub(crate) jar_cookies: Option<&'a HeaderValue>,
}

impl<'a> RequestInfo<'a> {
    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request path, as sent (before the endpoint's base path is added).
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions; `None` for `reqwest::Request`, which has none.
    pub fn extensions(&self) -> Option<&'a Extensions> {
        self.extensions
    }
}

type KeyFn = dyn Fn(&RequestInfo<'_>) -> Option<u64> + Send + Sync;

/// Where a consistent-hash policy finds a request's key: one or more
/// sources, tried in order; the first that yields a key wins.
///
/// The default is [`RequestKey::session`], the [`SessionKey`] in the
/// request's extensions.
///
/// ```
/// use tower_lb::RequestKey;
///
/// // An explicit SessionKey if set, else the x-user-id header, else the path.
/// let key = RequestKey::session()
///     .or(RequestKey::header("x-user-id"))
///     .or(RequestKey::path());
/// ```
#[derive(Clone)]
pub struct RequestKey {
    sources: Vec<Source>,
    /// A mistake found while configuring, reported when the balancer is built.
    error: Option<String>,
}

#[derive(Clone)]
enum Source {
    Session,
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
    Path,
    Custom(Arc<KeyFn>),
}

impl RequestKey {
    /// The [`SessionKey`] in the request's extensions, else the one in the
    /// [`SessionKey::HEADER`] header (how a `reqwest::Request` carries it).
    pub fn session() -> Self {
        Self::from_source(Source::Session)
    }

    /// The value of a header (the first, if it appears more than once).
    /// An invalid header name is reported by the balancer's `build()`.
    pub fn header(name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Self::from_source(Source::Header(name)),
            Err(_) => Self::invalid(format!("{name:?} is not a valid header name")),
        }
    }

    /// The value of a cookie in the request's `Cookie` headers, such as
    /// `JSESSIONID`: the first non-empty one of that name, without quotes.
    /// Malformed pairs are skipped; headers need not be UTF-8. An invalid
    /// cookie name is reported by the balancer's `build()`.
    pub fn cookie(name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Self::invalid(format!("{name:?} is not a valid cookie name"));
        }
        Self::from_source(Source::Cookie(name.into()))
    }

    /// The value of a query parameter, as sent (still percent-encoded): the
    /// first non-empty one of that name.
    pub fn query(name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        if name.is_empty() {
            return Self::invalid("the query parameter name is empty".into());
        }
        Self::from_source(Source::Query(name.into()))
    }

    /// The request path (without the query).
    pub fn path() -> Self {
        Self::from_source(Source::Path)
    }

    /// A function of the request that returns the key's hash, or `None` when
    /// the request has no key. Use [`key_hash`] on the key's bytes so that
    /// every process agrees.
    ///
    /// ```
    /// use tower_lb::{key_hash, RequestKey};
    ///
    /// let tenant = RequestKey::from_fn(|request| {
    ///     let first = request.path().trim_start_matches('/').split('/').next()?;
    ///     (!first.is_empty()).then(|| key_hash(first.as_bytes()))
    /// });
    /// ```
    pub fn from_fn<F>(key: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<u64> + Send + Sync + 'static,
    {
        Self::from_source(Source::Custom(Arc::new(key)))
    }

    /// Tries `self` first, then `other`.
    pub fn or(mut self, other: RequestKey) -> Self {
        self.sources.extend(other.sources);
        self.error = self.error.or(other.error);
        self
    }

    fn from_source(source: Source) -> Self {
        RequestKey {
            sources: vec![source],
            error: None,
        }
    }

    fn invalid(reason: String) -> Self {
        RequestKey {
            sources: Vec::new(),
            error: Some(reason),
        }
    }

    /// Whether a source reads [`SessionKey::HEADER`], which the balancer
    /// then removes before sending.
    pub(crate) fn reads_session_header(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Session))
    }

    /// Names of the cookies this key is read from.
    pub(crate) fn cookie_names(&self) -> Vec<Box<str>> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                Source::Cookie(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The hash of the request's key, from the first source that has one.
    pub(crate) fn hash(&self, request: &RequestInfo<'_>) -> Option<u64> {
        self.sources.iter().find_map(|source| match source {
            Source::Session => request
                .extensions
                .and_then(|e| e.get::<SessionKey>())
                .copied()
                .or_else(|| {
                    let value = request.headers.get(SessionKey::HEADER)?;
                    SessionKey::from_header_value(value)
                })
                .map(|key| key.digest()),
            Source::Header(name) => request
                .headers
                .get(name)
                .map(|value| key_hash(value.as_bytes())),
            Source::Cookie(name) => cookie::find_cookie(request.headers, name)
                .or_else(|| {
                    let stored = request.jar_cookies?;
                    cookie::find_in_header(stored.as_bytes(), name.as_bytes())
                })
                .map(key_hash),
            Source::Query(name) => request
                .query
                .and_then(|query| find_query_parameter(query, name))
                .map(|value| key_hash(value.as_bytes())),
            Source::Path => Some(key_hash(request.path.as_bytes())),
            Source::Custom(key) => key(request),
        })
    }
}

impl Default for RequestKey {
    fn default() -> Self {
        Self::session()
    }
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for source in &self.sources {
            match source {
                Source::Session => list.entry(&"session"),
                Source::Header(name) => list.entry(&format_args!("header {name}")),
                Source::Cookie(name) => list.entry(&format_args!("cookie {name}")),
                Source::Query(name) => list.entry(&format_args!("query {name}")),
                Source::Path => list.entry(&"path"),
                Source::Custom(_) => list.entry(&"custom"),
            };
        }
        list.finish()
    }
}

/// The first non-empty value of parameter `name` in a query string.
fn find_query_parameter<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then_some(value)
    })
}

/// A byte allowed in a cookie name (an RFC 7230 token).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(headers: &'a HeaderMap, extensions: &'a Extensions) -> RequestInfo<'a> {
        RequestInfo {
            method: &Method::GET,
            path: "/a/b",
            query: None,
            headers,
            extensions: Some(extensions),
            jar_cookies: None,
        }
    }

    #[test]
    fn sources_are_tried_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", "u1".parse().unwrap());
        let mut extensions = Extensions::new();
        let key = RequestKey::session()
            .or(RequestKey::header("x-user-id"))
            .or(RequestKey::path());

        assert_eq!(
            key.hash(&info(&headers, &extensions)),
            Some(key_hash(b"u1"))
        );
        extensions.insert(SessionKey::new("s1"));
        assert_eq!(
            key.hash(&info(&headers, &extensions)),
            Some(key_hash(b"s1"))
        );
        let empty = HeaderMap::new();
        let none = Extensions::new();
        assert_eq!(key.hash(&info(&empty, &none)), Some(key_hash(b"/a/b")));
        assert_eq!(RequestKey::session().hash(&info(&empty, &none)), None);
    }

    #[test]
    fn cookie_and_query_sources() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; sid=\"s-9\"".parse().unwrap());
        let extensions = Extensions::new();
        let mut request = info(&headers, &extensions);
        request.query = Some("x=&user=u7&user=u8");
        assert_eq!(
            RequestKey::cookie("sid").hash(&request),
            Some(key_hash(b"s-9"))
        );
        assert_eq!(
            RequestKey::query("user").hash(&request),
            Some(key_hash(b"u7"))
        );
        assert_eq!(RequestKey::query("x").hash(&request), None);
        assert!(RequestKey::cookie("bad name").error().is_some());
        assert!(RequestKey::cookie("").error().is_some());
        assert!(RequestKey::query("").error().is_some());
    }

    #[test]
    fn a_bad_header_name_is_kept_as_an_error() {
        assert!(RequestKey::header("bad header").error().is_some());
        assert!(RequestKey::path()
            .or(RequestKey::header(""))
            .error()
            .is_some());
        assert!(RequestKey::header("x-ok").error().is_none());
    }

    #[test]
    fn the_hash_is_pinned() {
        // XXH3-64, seed 0: part of the compatibility promise.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"user-42"), key_hash(b"user-42"));
    }
}
