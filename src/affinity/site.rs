//! The cookies of a client behind the balancer, with every endpoint's filed
//! under one site.
//!
//! reqwest's own cookie store files a cookie under the host that set it, so
//! a session cookie from one backend would never be offered for the next
//! request (sent to the service's placeholder host, then to whichever
//! backend), and the balancer, which runs before reqwest adds stored
//! cookies, would not see it either. Here every cookie set by an endpoint
//! is filed under one site, and the balancer reads its affinity cookie from
//! there when a request carries none of its own. The reqwest-facing store
//! is [`BalancedCookieJar`](crate::BalancedCookieJar).

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;
use reqwest::cookie::{CookieStore, Jar};
use reqwest::Url;

/// The one host every endpoint's cookies are filed under. `.invalid` is
/// reserved, so it never names a real site.
const SITE: &str = "balanced.invalid";

#[derive(Default)]
pub(crate) struct SiteCookies {
    cookies: Jar,
    /// Whether any cookie was ever filed under the site: until then a
    /// request's lookup is one load.
    filled: AtomicBool,
}

/// Never the cookies: their values are session secrets.
impl std::fmt::Debug for SiteCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCookies")
            .field("holds_any", &self.holds_any())
            .finish_non_exhaustive()
    }
}

impl SiteCookies {
    /// Whether any endpoint ever set a cookie.
    pub(crate) fn holds_any(&self) -> bool {
        self.filled.load(Ordering::Relaxed)
    }

    /// The cookies reqwest will send with a request for `path` under
    /// `base_path` on the balanced site: `Secure` ones only if `secure`
    /// (the request goes over https), and only those whose `Path` matches,
    /// so that the balancer routes by exactly what goes on the wire.
    pub(crate) fn for_request(
        &self,
        secure: bool,
        base_path: &str,
        path: &str,
    ) -> Option<HeaderValue> {
        let scheme = if secure { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}://{SITE}{base_path}{path}")).ok()?;
        self.cookies.cookies(&url)
    }

    /// Files cookies set by an endpoint at `url` under the site.
    pub(crate) fn set_for_endpoint(
        &self,
        cookie_headers: &mut dyn Iterator<Item = &HeaderValue>,
        url: &Url,
    ) {
        if let Some(site) = site_url(url) {
            self.cookies.set_cookies(cookie_headers, &site);
            self.filled.store(true, Ordering::Relaxed);
        }
    }

    /// The cookies stored for a request to an endpoint at `url`.
    pub(crate) fn for_endpoint(&self, url: &Url) -> Option<HeaderValue> {
        self.cookies.cookies(&site_url(url)?)
    }

    /// Files cookies of a host that is not an endpoint, as reqwest would.
    pub(crate) fn set_elsewhere(
        &self,
        cookie_headers: &mut dyn Iterator<Item = &HeaderValue>,
        url: &Url,
    ) {
        self.cookies.set_cookies(cookie_headers, url);
    }

    /// The cookies stored for a host that is not an endpoint.
    pub(crate) fn for_elsewhere(&self, url: &Url) -> Option<HeaderValue> {
        self.cookies.cookies(url)
    }
}

/// `url` moved onto the balanced site: same scheme and path.
fn site_url(url: &Url) -> Option<Url> {
    let mut site = url.clone();
    site.set_host(Some(SITE)).ok()?;
    site.set_port(None).ok()?;
    Some(site)
}
