//! A cookie store that sees the balanced service as one site.
//!
//! reqwest's own cookie store files a cookie under the host that set it, so
//! a session cookie from one backend would never be offered for the next
//! request (sent to the service's placeholder host, then to whichever
//! backend), and the balancer, which runs before reqwest adds stored
//! cookies, would not see it either. This store files every cookie set by an
//! endpoint of the balancer under one site, and the balancer reads its
//! affinity cookie from there when a request carries none of its own.

use http::HeaderValue;
use reqwest::cookie::{CookieStore, Jar};
use reqwest::Url;

use crate::balancer::WeakBalancer;

/// The one host every endpoint's cookies are filed under. `.invalid` is
/// reserved, so it never names a real site.
const SITE: &str = "balanced.invalid";

/// A reqwest cookie store for a client behind the balancer: give it to
/// `reqwest::ClientBuilder::cookie_provider`. Made by
/// [`Balancer::cookie_jar`](crate::Balancer::cookie_jar).
///
/// Cookies set by any endpoint of the balancer are kept for all of them, as
/// if the service were one host; cookies of other hosts are kept as
/// reqwest's own store keeps them. A cookie with a `Domain` attribute naming
/// a backend is refused, since the site has no such domain: session cookies
/// are host-only in practice. Like reqwest's store, one jar holds one
/// client's cookies: a server calling backends on behalf of many users
/// should key on an explicit [`SessionKey`](crate::SessionKey) instead.
#[derive(Debug)]
pub struct BalancedCookieJar {
    cookies: Jar,
    balancer: WeakBalancer,
}

impl BalancedCookieJar {
    pub(crate) fn new(balancer: WeakBalancer) -> Self {
        BalancedCookieJar {
            cookies: Jar::default(),
            balancer,
        }
    }

    /// The cookies reqwest will send with a request for `path` under
    /// `base_path` on the balanced site: `Secure` ones only if `secure`
    /// (the request goes over https), and only those whose `Path` matches,
    /// so that the balancer routes by exactly what goes on the wire.
    pub(crate) fn site_cookies(
        &self,
        secure: bool,
        base_path: &str,
        path: &str,
    ) -> Option<HeaderValue> {
        let scheme = if secure { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}://{SITE}{base_path}{path}")).ok()?;
        self.cookies.cookies(&url)
    }

    /// Where a cookie of `url` is filed: the balanced site for an endpoint of
    /// the balancer, else `url` itself.
    fn filed_under(&self, url: &Url) -> Option<Url> {
        let balancer = self.balancer.upgrade()?;
        if !balancer.serves(url) {
            return None;
        }
        let mut site = url.clone();
        site.set_host(Some(SITE)).ok()?;
        site.set_port(None).ok()?;
        Some(site)
    }
}

impl CookieStore for BalancedCookieJar {
    fn set_cookies(&self, cookie_headers: &mut dyn Iterator<Item = &HeaderValue>, url: &Url) {
        let site = self.filed_under(url);
        self.cookies
            .set_cookies(cookie_headers, site.as_ref().unwrap_or(url));
    }

    fn cookies(&self, url: &Url) -> Option<HeaderValue> {
        let site = self.filed_under(url);
        self.cookies.cookies(site.as_ref().unwrap_or(url))
    }
}
