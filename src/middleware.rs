//! The balancer as a `reqwest-middleware` middleware, for applications that
//! call `.send()` on a `reqwest_middleware::ClientWithMiddleware` rather than
//! a Tower service. Per-request values, such as a [`SessionKey`], travel in
//! the middleware's extensions (`RequestBuilder::with_extension`).

use std::error::Error as StdError;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;

use crate::balancer::Balancer;
use crate::error::Error;
use crate::pipeline::{failure, Answer, Step, Trip};

/// Sends each request through the balancer: the same choice, rewrite and
/// accounting as the Tower layer.
///
/// ```no_run
/// use tower_lb::{Balancer, Policy, RequestKey, SessionKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .policy(Policy::maglev().key(RequestKey::session()))
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(balancer.clone())
///     .build();
/// // The host is a placeholder; the key sends user 42 to the same backend every time.
/// let response = client
///     .get("http://backend/cart")
///     .with_extension(SessionKey::new("user-42"))
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Errors have the layer's shape: `reqwest_middleware::Error::Middleware`
/// wrapping an [`Error`]: [`Error::NoEndpointAvailable`], or
/// [`Error::Upstream`] naming the endpoint, with the `reqwest::Error` (or
/// a later middleware's error) as its source, as the layer has it.
#[async_trait::async_trait]
impl Middleware for Balancer {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let mut trip = Trip::new(self);
        let mut attempt = trip
            .start(self, &mut request, Some(extensions), false)
            .map_err(reqwest_middleware::Error::middleware)?;
        loop {
            let span = attempt.span().clone();
            let result = next.clone().run(request, extensions).instrument(span).await;
            let answer = match &result {
                Ok(response) => Answer::Response {
                    status: response.status(),
                    headers: response.headers(),
                },
                Err(error) => Answer::Failed(chain_of(error)),
            };
            let endpoint = result.is_err().then(|| attempt.url().clone());
            let served_by = result.is_ok().then(|| attempt.served_by());
            match trip.end(Some(self), attempt, answer, Some(extensions)) {
                Step::Retry(retry, started) => (request, attempt) = (retry, started),
                Step::Done(outcome) => {
                    let mut result = result;
                    if let (Ok(response), Some(served_by)) = (&mut result, served_by) {
                        response.extensions_mut().insert(served_by);
                    }
                    return result.map_err(|source| {
                        let source = unwrapped(source);
                        reqwest_middleware::Error::middleware(match &endpoint {
                            Some(endpoint) => failure(outcome, endpoint, source),
                            None => Error::NotReady(source),
                        })
                    });
                }
            }
        }
    }
}

fn unwrapped(error: reqwest_middleware::Error) -> crate::BoxError {
    match error {
        reqwest_middleware::Error::Reqwest(error) => Box::new(error),
        reqwest_middleware::Error::Middleware(error) => error.into(),
    }
}

/// The error as a source chain to classify: reqwest's own, or a later
/// middleware's.
fn chain_of(error: &reqwest_middleware::Error) -> &(dyn StdError + 'static) {
    match error {
        reqwest_middleware::Error::Reqwest(error) => error,
        reqwest_middleware::Error::Middleware(error) => {
            let error: &(dyn StdError + Send + Sync + 'static) = error.as_ref();
            error
        }
    }
}
