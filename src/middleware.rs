//! The balancer as a `reqwest-middleware` middleware, for applications that
//! call `.send()` on a `reqwest_middleware::ClientWithMiddleware` rather than
//! a Tower service. Per-request values, such as a [`SessionKey`], travel in
//! the middleware's extensions (`RequestBuilder::with_extension`).

use std::error::Error as StdError;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;

use crate::endpoint::InFlight;
use crate::outcome::Outcome;
use crate::{Balancer, Error, RequestInfo};

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
/// When no endpoint is available the error is
/// `reqwest_middleware::Error::Middleware` wrapping [`Error::NoEndpointAvailable`].
#[async_trait::async_trait]
impl Middleware for Balancer {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let retrying = self.retrying();
        if let Some(retrying) = retrying {
            retrying.budget.deposit();
        }
        let mut retries_left = retrying.map_or(0, |r| r.policy.max_retries);
        let mut tried = Vec::new();
        // The last attempt's answer, returned if no other endpoint is left.
        let mut previous = None;
        loop {
            // An unrouted copy to send again, made while one may follow.
            let copy = if retries_left > 0 {
                request.try_clone()
            } else {
                None
            };
            let info = RequestInfo {
                method: request.method(),
                path: request.url().path(),
                query: request.url().query(),
                headers: request.headers(),
                extensions: Some(extensions),
                jar_cookies: None,
            };
            let Some(endpoint) = self.pick_for(&info, &tried) else {
                return previous.unwrap_or_else(|| {
                    Err(reqwest_middleware::Error::middleware(
                        Error::NoEndpointAvailable,
                    ))
                });
            };
            endpoint
                .url
                .route_url(request.url_mut())
                .map_err(reqwest_middleware::Error::middleware)?;
            let method = request.method().clone();
            let span = tracing::debug_span!("tower_lb", endpoint = %endpoint.url);
            let in_flight = InFlight::start(endpoint.clone());
            let result = next
                .clone()
                .run(request, extensions)
                .instrument(span.clone())
                .await;
            let _entered = span.enter();
            let status = result.as_ref().ok().map(|response| response.status());
            let outcome = match &result {
                Ok(response) => {
                    if let Some(learned) = self.learned() {
                        learned.learn(response.headers(), in_flight.endpoint());
                    }
                    Outcome::from_status(response.status())
                }
                Err(reqwest_middleware::Error::Reqwest(error)) => Outcome::from_error(error),
                Err(reqwest_middleware::Error::Middleware(error)) => {
                    let error: &(dyn StdError + Send + Sync + 'static) = error.as_ref();
                    Outcome::from_error(error)
                }
            };
            let latency = in_flight.finish(outcome, status);
            tracing::debug!(
                ?outcome,
                latency_us = latency.as_micros() as u64,
                "request finished"
            );
            match (copy, retrying) {
                (Some(copy), Some(retrying)) if retrying.allows(outcome, &method, retries_left) => {
                    tracing::debug!(?outcome, "retrying on another endpoint");
                    retries_left -= 1;
                    tried.push(endpoint);
                    request = copy;
                    previous = Some(result);
                }
                _ => return result,
            }
        }
    }
}
