//! Endpoint addresses: parsing, the canonical name, and the pieces a request
//! rewrite needs.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use super::interned::interned;
use crate::target::{resolve_path, TargetRefusal};
use crate::Error;

/// Where an endpoint lives: `http` or `https`, host and port, and an optional
/// base path that is put in front of every request path.
///
/// Parsed once, when the endpoint joins the set, so that routing a request
/// only copies ready-made parts.
#[derive(Clone, Debug)]
pub struct EndpointUrl {
    scheme: Scheme,
    authority: Authority,
    /// The port, written or implied: read when rewriting `reqwest` URLs.
    #[cfg_attr(not(any(feature = "reqwest", feature = "metrics")), allow(dead_code))]
    port: u16,
    /// Empty, or starts with `/` and has no trailing `/`.
    base_path: Box<str>,
    /// `scheme://host:port/base`, lowercase host, port always written.
    canonical: Arc<str>,
    /// `scheme://host:port/` as a `reqwest` URL: every routed `reqwest`
    /// URL starts as a copy of it (see [`EndpointUrl::route_url`]). `None`
    /// if the url crate reads the host differently from `http`.
    #[cfg(feature = "reqwest")]
    reqwest_origin: Option<reqwest::Url>,
}

impl EndpointUrl {
    /// Parses and checks an endpoint URL such as `http://10.0.0.7:8080` or
    /// `https://api.internal/v2`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let parsed = Self::parse_once(url)?;
        // The canonical name must name the same endpoint again: it is how
        // stats show the endpoint and how updates find it.
        match Self::parse_once(parsed.as_str()) {
            Ok(again) if again.canonical == parsed.canonical => Ok(EndpointUrl {
                #[cfg(feature = "reqwest")]
                reqwest_origin: reqwest_origin(&parsed),
                authority: interned(parsed.authority),
                ..parsed
            }),
            _ => Err(Error::InvalidUrl {
                source: None,
                url: url.to_owned(),
                reason: format!(
                    "the host is not a valid name or address (it would read back as {})",
                    parsed.canonical
                ),
            }),
        }
    }

    fn parse_once(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
            source: None,
        };
        if url.contains('#') {
            return Err(invalid(
                "an endpoint URL cannot carry a fragment (it would be dropped)",
            ));
        }
        let uri: Uri =
            url.trim()
                .parse()
                .map_err(|e: http::uri::InvalidUri| Error::InvalidUrl {
                    url: url.to_owned(),
                    reason: format!("not a URI ({e}); expected e.g. http://127.0.0.1:8080"),
                    source: Some(e),
                })?;
        let parts = uri.into_parts();
        let scheme = match parts.scheme {
            Some(s) if s == Scheme::HTTP || s == Scheme::HTTPS => s,
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => {
                return Err(invalid(
                    "missing scheme; expected e.g. http://127.0.0.1:8080",
                ))
            }
        };
        let authority = parts.authority.ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info (user:password@) is not supported"));
        }
        if authority.host().is_empty() {
            return Err(invalid("missing host"));
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let has_port = authority.as_str().len() > authority.host().len();
        let port = match authority.port_u16() {
            None if !has_port => default_port,
            Some(port) if port > 0 => port,
            _ => return Err(invalid("the port must be a number from 1 to 65535")),
        };
        let base_path = match &parts.path_and_query {
            Some(pq) if pq.query().is_some() => {
                return Err(invalid("an endpoint URL cannot carry a query"))
            }
            Some(pq) => pq.path().trim_end_matches('/'),
            None => "",
        };
        if !base_path.is_empty() && resolve_path(base_path) != Ok(None) {
            return Err(invalid(
                "the base path cannot hold . or .. segments (write the path they lead to)",
            ));
        }
        // Lowercase what is case-insensitive so that two spellings of one
        // endpoint compare equal.
        let authority: Authority = authority
            .as_str()
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| invalid("invalid host"))?;
        let canonical = format!(
            "{scheme}://{}:{port}{base_path}",
            canonical_host(authority.host())
        );
        Ok(EndpointUrl {
            scheme,
            authority,
            port,
            base_path: base_path.into(),
            canonical: canonical.into(),
            #[cfg(feature = "reqwest")]
            reqwest_origin: None,
        })
    }

    /// The canonical form, `scheme://host:port/base` (lowercase host, IPv6
    /// in its shortest form, port always written): the endpoint's name in
    /// stats, errors and updates.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The host as OpenTelemetry's `server.address` writes it: lowercase,
    /// an IPv6 address without its brackets.
    #[cfg(feature = "metrics")]
    pub(crate) fn server_address(&self) -> String {
        let host = canonical_host(self.authority.host());
        let host = host.as_ref();
        host.strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned()
    }

    /// The port, written or implied.
    #[cfg(feature = "metrics")]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The canonical form, shared rather than copied.
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.canonical.clone()
    }

    /// Turns a request's URI into one for this endpoint: its scheme and
    /// authority, the base path, then the request's own path (resolved as
    /// [`crate::target`] says) and query. Takes the URI by value so that
    /// the path is moved, not copied, when it needs no change.
    pub(crate) fn join(&self, request: Uri) -> Result<Uri, Error> {
        let mut parts = request.into_parts();
        if parts.authority.is_some() {
            let target = parts.path_and_query.as_ref();
            // User info goes with the authority: the front end moved it
            // to a header first (see `crate::target`).
            if parts.scheme.is_none() {
                return Err(refused(target, TargetRefusal::AuthorityForm));
            }
        }
        let path = parts.path_and_query.as_ref().map_or("", PathAndQuery::path);
        let resolved = resolve_path(path).map_err(|r| refused(parts.path_and_query.as_ref(), r))?;
        if resolved.is_some() || !self.base_path.is_empty() {
            let resolved = resolved.as_deref().unwrap_or(path);
            let query = parts.path_and_query.as_ref().and_then(PathAndQuery::query);
            let mut joined = String::with_capacity(
                self.base_path.len() + resolved.len() + query.map_or(0, |q| q.len() + 1),
            );
            joined.push_str(&self.base_path);
            joined.push_str(resolved);
            if let Some(query) = query {
                joined.push('?');
                joined.push_str(query);
            }
            parts.path_and_query =
                Some(PathAndQuery::try_from(joined).map_err(|e| self.invalid_request(e))?);
        }
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        Uri::from_parts(parts).map_err(|e| self.invalid_request(e))
    }

    /// Points a `reqwest` URL at this endpoint, keeping path and query, by
    /// the same rules as [`EndpointUrl::join`].
    ///
    /// The routed URL is a copy of the endpoint's origin with the request's
    /// path and query set on it: about 160 ns here, where setting scheme,
    /// host and port on the request's URL took about 550 (the url crate
    /// parses a host it is given, and rewrites the whole URL at each step).
    #[cfg(feature = "reqwest")]
    ///
    /// The routed URL never keeps user info: the front end took it first
    /// (see `crate::target`).
    pub(crate) fn route_url(&self, url: &mut reqwest::Url) -> Result<(), Error> {
        let resolved = resolve_path(url.path()).map_err(|reason| Error::InvalidTarget {
            path: url.path().to_owned(),
            reason,
        })?;
        let path = match resolved {
            None if self.base_path.is_empty() => None,
            resolved => Some(format!(
                "{}{}",
                self.base_path,
                resolved.as_deref().unwrap_or(url.path())
            )),
        };
        // A scheme other than http(s) (`ws:`, `foo:`) is rewritten in
        // place, which refuses what the url crate cannot turn into http.
        let origin = self
            .reqwest_origin
            .as_ref()
            .filter(|_| matches!(url.scheme(), "http" | "https"));
        let Some(origin) = origin else {
            return self.route_url_in_place(url, path);
        };
        let mut routed = origin.clone();
        let path = path.as_deref().unwrap_or(url.path());
        if path != "/" {
            routed.set_path(path);
        }
        if url.query().is_some() {
            routed.set_query(url.query());
        }
        *url = routed;
        Ok(())
    }

    /// [`EndpointUrl::route_url`] by setting scheme, host and port on `url`
    /// itself, and `path` if given (dropping the fragment): for a request
    /// URL whose scheme is not http(s), and for an endpoint host the url
    /// crate reads differently from `http`, so that it refuses them here.
    #[cfg(feature = "reqwest")]
    fn route_url_in_place(
        &self,
        url: &mut reqwest::Url,
        path: Option<String>,
    ) -> Result<(), Error> {
        let default_port = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = (self.port != default_port).then_some(self.port);
        url.set_scheme(self.scheme.as_str())
            .map_err(|()| self.invalid_request("scheme cannot be changed"))?;
        url.set_host(Some(self.authority.host()))
            .map_err(|e| self.invalid_request(e))?;
        url.set_port(port)
            .map_err(|()| self.invalid_request("port cannot be set"))?;
        url.set_fragment(None);
        // Fails only for a URL that cannot hold user info, so has none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if let Some(path) = path {
            url.set_path(&path);
        }
        Ok(())
    }

    /// Whether requests to this endpoint go over TLS (so `Secure` cookies
    /// are sent to it).
    #[cfg(feature = "cookies")]
    pub(crate) fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The base path: empty, or starting with `/` and without a trailing `/`.
    #[cfg(any(feature = "cookies", feature = "tonic"))]
    pub(crate) fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Whether `url` is on this endpoint's scheme, host and port.
    #[cfg(feature = "cookies")]
    pub(crate) fn serves(&self, url: &reqwest::Url) -> bool {
        url.scheme() == self.scheme.as_str()
            && url.port_or_known_default() == Some(self.port)
            && url
                .host_str()
                .is_some_and(|host| host.eq_ignore_ascii_case(self.authority.host()))
    }

    fn invalid_request(&self, reason: impl fmt::Display) -> Error {
        Error::InvalidRequest {
            endpoint: self.as_str().to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The error for a refused target, naming its path only: a query may
/// carry tokens.
fn refused(target: Option<&PathAndQuery>, reason: TargetRefusal) -> Error {
    Error::InvalidTarget {
        path: target.map_or("", PathAndQuery::path).to_owned(),
        reason,
    }
}

impl PartialEq for EndpointUrl {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for EndpointUrl {}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// `host` as the canonical name writes it: an IPv6 address in its
/// shortest form (RFC 5952: `[0:0::1]` is `[::1]`), so that two spellings
/// of one address name one endpoint; any other host as it is.
fn canonical_host(host: &str) -> Cow<'_, str> {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map_or(Cow::Borrowed(host), |address| {
            Cow::Owned(format!("[{address}]"))
        })
}

/// `scheme://host:port/` of `endpoint` as a `reqwest` URL, if the url
/// crate reads it back with the same host and port.
#[cfg(feature = "reqwest")]
fn reqwest_origin(endpoint: &EndpointUrl) -> Option<reqwest::Url> {
    let origin =
        reqwest::Url::parse(&format!("{}://{}/", endpoint.scheme, endpoint.authority)).ok()?;
    let same = origin.host_str() == Some(canonical_host(endpoint.authority.host()).as_ref())
        && origin.port_or_known_default() == Some(endpoint.port)
        && origin.scheme() == endpoint.scheme.as_str();
    same.then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_writes_the_port_and_lowercases_the_host() {
        let url = EndpointUrl::parse("HTTP://Example.COM/api/").unwrap();
        assert_eq!(url.as_str(), "http://example.com:80/api");
        assert_eq!(
            url,
            EndpointUrl::parse("http://example.com:80/api").unwrap()
        );
        let tls = EndpointUrl::parse("https://example.com").unwrap();
        assert_eq!(tls.as_str(), "https://example.com:443");
        // One IPv6 address, however it is written, is one endpoint.
        for spelling in [
            "http://[::1]:9000",
            "http://[0:0:0:0:0:0:0:1]:9000/",
            "http://[0000::0001]:9000",
        ] {
            assert_eq!(
                EndpointUrl::parse(spelling).unwrap().as_str(),
                "http://[::1]:9000"
            );
        }
        let mapped = EndpointUrl::parse("http://[::FFFF:10.0.0.1]").unwrap();
        assert_eq!(mapped.as_str(), "http://[::ffff:10.0.0.1]:80");
    }

    #[test]
    fn bad_urls_are_rejected_with_a_reason() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "/just/a/path",
            "ftp://127.0.0.1",
            "http://",
            "http://user:pw@127.0.0.1",
            "http://127.0.0.1:0",
            "http://127.0.0.1/x?y=1",
            "http://exa mple.com",
            "http://127.0.0.1:99999",
        ] {
            match EndpointUrl::parse(bad) {
                Err(Error::InvalidUrl { url, reason, .. }) => {
                    assert_eq!(url, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn extra_parts_that_would_be_dropped_are_refused() {
        for url in [
            "http://127.0.0.1:8081/api#top",
            "http://127.0.0.1:8081/api?x=1",
            "http://127.0.0.1:8081/api?",
            "http://user:pw@127.0.0.1:8081",
            "http://127.0.0.1:8081/api/../admin",
            "http://127.0.0.1:8081/./api",
            "http://127.0.0.1:8081/%2e%2e/api",
        ] {
            assert!(
                matches!(EndpointUrl::parse(url), Err(Error::InvalidUrl { .. })),
                "{url} was accepted"
            );
        }
        for url in [
            "http://127.0.0.1:8081/v1.2",
            "http://127.0.0.1:8081/a/.well-known",
        ] {
            assert!(EndpointUrl::parse(url).is_ok(), "{url} was refused");
        }
    }

    #[test]
    fn join_keeps_path_and_query_and_prefixes_the_base_path() {
        let plain = EndpointUrl::parse("http://127.0.0.1:8081").unwrap();
        let uri: Uri = "/users/42?full=1".parse().unwrap();
        assert_eq!(
            plain.join(uri.clone()).unwrap(),
            "http://127.0.0.1:8081/users/42?full=1"
        );

        let based = EndpointUrl::parse("http://127.0.0.1:8081/api/").unwrap();
        assert_eq!(
            based.join(uri).unwrap(),
            "http://127.0.0.1:8081/api/users/42?full=1"
        );

        // An absolute request URI has its scheme and authority replaced.
        let absolute: Uri = "https://placeholder/x".parse().unwrap();
        assert_eq!(plain.join(absolute).unwrap(), "http://127.0.0.1:8081/x");
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn route_url_rewrites_scheme_host_port_and_base_path() {
        let endpoint = EndpointUrl::parse("http://[::1]:8081/api").unwrap();
        let mut url = reqwest::Url::parse("https://backend/users/42?x=%20y").unwrap();
        endpoint.route_url(&mut url).unwrap();
        assert_eq!(url.as_str(), "http://[::1]:8081/api/users/42?x=%20y");

        let default_port = EndpointUrl::parse("http://127.0.0.1:80").unwrap();
        let mut url = reqwest::Url::parse("http://backend:1234/").unwrap();
        default_port.route_url(&mut url).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1/");

        // Only an http(s) request URL has its scheme replaced.
        let mut url = reqwest::Url::parse("foo://backend/x").unwrap();
        assert!(matches!(
            default_port.route_url(&mut url),
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[cfg(feature = "reqwest")]
    proptest::proptest! {
        /// Routing a `reqwest` URL from a copy of the endpoint's origin gives
        /// exactly what setting scheme, host, port (and path) on the URL
        /// itself gives, or the same refusal: over paths, queries and
        /// fragments of arbitrary characters, escapes and dot segments, to
        /// endpoints with and without base paths, ports and IPv6 hosts.
        #[test]
        fn a_reqwest_url_routed_from_the_origin_equals_one_rewritten_in_place(
            endpoint in proptest::sample::select(vec![
                "http://127.0.0.1:8081",
                "http://[::1]:8081/api",
                "https://Example.COM",
                "http://backend.internal:80/v1/",
                "https://10.0.0.1:443/a/b",
                "http://xn--bcher-kva.example:9000",
            ]),
            from in proptest::sample::select(vec![
                "http://placeholder",
                "https://u@host:9",
                "http://h:1/base",
                "ws://backend",
                "foo://backend",
                "file://",
            ]),
            target in "[a-zA-Z0-9/._~%!$&'()*+,;=:@ é?#\\\\-]{0,40}",
        ) {
            let endpoint = EndpointUrl::parse(endpoint).unwrap();
            proptest::prop_assert!(endpoint.reqwest_origin.is_some());
            let in_place = EndpointUrl { reqwest_origin: None, ..endpoint.clone() };
            let Ok(url) = reqwest::Url::parse(&format!("{from}/{target}")) else {
                return Ok(());
            };
            let route = |endpoint: &EndpointUrl| {
                let mut routed = url.clone();
                endpoint.route_url(&mut routed).map(|()| routed.to_string()).map_err(|e| e.to_string())
            };
            proptest::prop_assert_eq!(route(&endpoint), route(&in_place), "{}", url);
        }
    }
}
