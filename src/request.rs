//! What the balancer reads from and writes to the requests and responses it
//! handles: `http` types, the Tower convention, and `reqwest`'s own.

use std::any::Any;

use bytes::Bytes;
use http::{Extensions, HeaderMap, StatusCode};
use http_body_util::{Empty, Full};

use crate::endpoint::EndpointUrl;
use crate::target::{authorize, basic_credentials};
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

        /// The request's headers, to remove the balancer's own.
        fn headers_mut(&mut self) -> &mut HeaderMap;

        /// A copy to send again, if the body can be sent twice.
        fn try_clone(&self) -> Option<Self>
        where
            Self: Sized;
    }

    pub trait Status {
        fn status(&self) -> StatusCode;
        fn headers(&self) -> &HeaderMap;
        /// Where the balancer puts [`ServedBy`](crate::ServedBy).
        fn extensions_mut(&mut self) -> &mut Extensions;
    }
}

impl<B: 'static> BalanceRequest for http::Request<B> {}

impl<B: 'static> sealed::Route for http::Request<B> {
    fn try_clone(&self) -> Option<Self> {
        let mut copy = http::Request::new(replay_body(self.body())?);
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }

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
        // User info leaves with the authority; it becomes a header.
        let credentials = self
            .uri()
            .authority()
            .and_then(|authority| authority.as_str().rsplit_once('@'))
            .and_then(|(info, _)| {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (info, None),
                };
                basic_credentials(user, password)
            });
        let uri = std::mem::take(self.uri_mut());
        *self.uri_mut() = endpoint.join(uri)?;
        authorize(self.headers_mut(), credentials);
        Ok(())
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }
}

/// A copy of a body known to be in memory: `()`, `&'static str`,
/// `&'static [u8]`, `String`, `Vec<u8>`, `bytes::Bytes`,
/// `http_body_util::Full<Bytes>`, `http_body_util::Empty<Bytes>`, or a
/// `reqwest::Body` made from bytes or a string. Other bodies (streams) are
/// never sent twice.
fn replay_body<B: 'static>(body: &B) -> Option<B> {
    let body: &dyn Any = body;
    let copy: Box<dyn Any> = if body.is::<()>() {
        Box::new(())
    } else if let Some(text) = body.downcast_ref::<&'static str>() {
        Box::new(*text)
    } else if let Some(bytes) = body.downcast_ref::<&'static [u8]>() {
        Box::new(*bytes)
    } else if let Some(text) = body.downcast_ref::<String>() {
        Box::new(text.clone())
    } else if let Some(bytes) = body.downcast_ref::<Vec<u8>>() {
        Box::new(bytes.clone())
    } else if let Some(bytes) = body.downcast_ref::<Bytes>() {
        Box::new(bytes.clone())
    } else if let Some(full) = body.downcast_ref::<Full<Bytes>>() {
        Box::new(full.clone())
    } else if body.is::<Empty<Bytes>>() {
        Box::new(Empty::<Bytes>::new())
    } else {
        replay_reqwest_body(body)?
    };
    copy.downcast::<B>().ok().map(|copy| *copy)
}

#[cfg(feature = "reqwest")]
fn replay_reqwest_body(body: &dyn Any) -> Option<Box<dyn Any>> {
    let bytes = body.downcast_ref::<reqwest::Body>()?.as_bytes()?;
    Some(Box::new(reqwest::Body::from(
        bytes::Bytes::copy_from_slice(bytes),
    )))
}

#[cfg(not(feature = "reqwest"))]
fn replay_reqwest_body(_: &dyn Any) -> Option<Box<dyn Any>> {
    None
}

impl<B> BalanceResponse for http::Response<B> {}

impl<B> sealed::Status for http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        self.extensions_mut()
    }
}

#[cfg(feature = "reqwest")]
impl BalanceRequest for reqwest::Request {}

#[cfg(feature = "reqwest")]
impl sealed::Route for reqwest::Request {
    fn try_clone(&self) -> Option<Self> {
        self.try_clone()
    }

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
        let url = self.url();
        let credentials = basic_credentials(url.username(), url.password());
        endpoint.route_url(self.url_mut())?;
        authorize(self.headers_mut(), credentials);
        Ok(())
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
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

    fn extensions_mut(&mut self) -> &mut Extensions {
        self.extensions_mut()
    }
}
