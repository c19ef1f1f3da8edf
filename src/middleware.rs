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
        let info = RequestInfo {
            method: request.method(),
            path: request.url().path(),
            query: request.url().query(),
            headers: request.headers(),
            extensions: Some(extensions),
            jar_cookies: None,
        };
        let endpoint = self
            .pick_for(&info)
            .ok_or_else(|| reqwest_middleware::Error::middleware(Error::NoEndpointAvailable))?;
        endpoint
            .url
            .route_url(request.url_mut())
            .map_err(reqwest_middleware::Error::middleware)?;
        let span = tracing::debug_span!("tower_lb", endpoint = %endpoint.url);
        let in_flight = InFlight::start(endpoint);
        let result = next.run(request, extensions).instrument(span.clone()).await;
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
        result
    }
}
