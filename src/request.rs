//! What the balancer reads from and writes to the requests and responses it
//! handles: `http` types, the Tower convention, and `reqwest`'s own.

use http::{HeaderMap, StatusCode};

use crate::endpoint::EndpointUrl;
use crate::{Error, RequestInfo};

/// A request the balancer can route: [`http::Request<B>`] for any body, and
/// `reqwest::Request` (with the `reqwest` feature, on by default).
///
/// The balancer replaces the request's scheme and authority with the chosen
/// endpoint's and puts the endpoint's base path in front of the request's
/// path; query and headers are kept. An `http::Request` may carry just a path
/// (`/users/42`); a `reqwest::Request` always has a full URL, whose host is
/// then a placeholder (`http://backend/users/42`).
///
/// This trait is sealed: the balancer relies on exactly how these types are
/// rewritten.
pub trait BalanceRequest: sealed::Route {}

/// A response whose status the balancer reads to classify the outcome:
/// [`http::Response<B>`] and `reqwest::Response`. Sealed.
pub trait BalanceResponse: sealed::Status {}

pub(crate) mod sealed {
    use super::*;

    pub trait Route {
        /// What key sources may read.
        fn info(&self) -> RequestInfo<'_>;

        /// Points the request at `endpoint`.
        fn route_to(&mut self, endpoint: &EndpointUrl) -> Result<(), Error>;
    }

    pub trait Status {
        fn status(&self) -> StatusCode;
        fn headers(&self) -> &HeaderMap;
    }
}

impl<B> BalanceRequest for http::Request<B> {}

impl<B> sealed::Route for http::Request<B> {
    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: self.method(),
            path: self.uri().path(),
            query: self.uri().query(),
            headers: self.headers(),
            extensions: Some(self.extensions()),
            jar_cookies: None,
        }
    }

    fn route_to(&mut self, endpoint: &EndpointUrl) -> Result<(), Error> {
        let uri = std::mem::take(self.uri_mut());
        *self.uri_mut() = endpoint.join(uri)?;
        Ok(())
    }
}

impl<B> BalanceResponse for http::Response<B> {}

impl<B> sealed::Status for http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
}

#[cfg(feature = "reqwest")]
impl BalanceRequest for reqwest::Request {}

#[cfg(feature = "reqwest")]
impl sealed::Route for reqwest::Request {
    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: self.method(),
            path: self.url().path(),
            query: self.url().query(),
            headers: self.headers(),
            extensions: None,
            jar_cookies: None,
        }
    }

    fn route_to(&mut self, endpoint: &EndpointUrl) -> Result<(), Error> {
        endpoint.route_url(self.url_mut())
    }
}

#[cfg(feature = "reqwest")]
impl BalanceResponse for reqwest::Response {}

#[cfg(feature = "reqwest")]
impl sealed::Status for reqwest::Response {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
}
