//! The cookie store handed to reqwest for learned session affinity.

use std::sync::Arc;

use http::HeaderValue;
use reqwest::cookie::CookieStore;
use reqwest::Url;

use crate::affinity::SiteCookies;
use crate::balancer::{Balancer, WeakBalancer};

/// A reqwest cookie store for a client behind the balancer: give it to
/// `reqwest::ClientBuilder::cookie_provider`. Made by
/// [`Balancer::cookie_jar`].
///
/// Cookies set by any endpoint of the balancer are kept for all of them, as
/// if the service were one host; cookies of other hosts are kept as
/// reqwest's own store keeps them. A cookie with a `Domain` attribute naming
/// a backend is refused, since the site has no such domain: session cookies
/// are host-only in practice. Like reqwest's store, one jar holds one
/// client's cookies: a server calling backends on behalf of many users
/// should key on an explicit [`SessionKey`](crate::SessionKey) instead.
///
/// `Debug` shows no cookie.
pub struct BalancedCookieJar {
    cookies: Arc<SiteCookies>,
    balancer: WeakBalancer,
}

impl std::fmt::Debug for BalancedCookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedCookieJar")
            .field("holds_cookies", &self.cookies.holds_any())
            .finish_non_exhaustive()
    }
}

impl BalancedCookieJar {
    /// Whether `url` points at one of the balancer's endpoints.
    fn is_endpoint(&self, url: &Url) -> bool {
        self.balancer
            .upgrade()
            .is_some_and(|balancer| balancer.serves(url))
    }
}

impl CookieStore for BalancedCookieJar {
    fn set_cookies(&self, cookie_headers: &mut dyn Iterator<Item = &HeaderValue>, url: &Url) {
        if self.is_endpoint(url) {
            self.cookies.set_for_endpoint(cookie_headers, url);
        } else {
            self.cookies.set_elsewhere(cookie_headers, url);
        }
    }

    fn cookies(&self, url: &Url) -> Option<HeaderValue> {
        if self.is_endpoint(url) {
            self.cookies.for_endpoint(url)
        } else {
            self.cookies.for_elsewhere(url)
        }
    }
}

impl Balancer {
    /// A cookie store to give the `reqwest::Client` under the balancer, so
    /// that a backend's session cookie brings the client back to it
    /// ("learned affinity"). Needs the `cookies` feature and a policy keyed
    /// on a cookie ([`RequestKey::cookie`](crate::RequestKey::cookie)).
    ///
    /// Every call returns a handle on the same cookies.
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy, RequestKey};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .policy(Policy::ring_hash().key(RequestKey::cookie("JSESSIONID")))
    ///     .build()?;
    /// let http = reqwest::Client::builder()
    ///     .cookie_provider(balancer.cookie_jar())
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cookie_jar(&self) -> Arc<BalancedCookieJar> {
        Arc::new(BalancedCookieJar {
            cookies: self.site_cookies().clone(),
            balancer: self.downgrade(),
        })
    }
}
