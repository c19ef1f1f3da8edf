//! A policy of your own: prefer endpoints not labelled `canary=true`, and
//! fall back to all of them only when none of those can take a request.
//!
//! `cargo run --example custom_policy`

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_lb::{
    Balancer, Candidates, Endpoint, HttpToReqwest, PickContext, Picker, Policy, SelectionPolicy,
    Subset,
};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Sends requests to stable endpoints by the inner policy; canaries get
/// requests only while no stable endpoint can take one.
#[derive(Debug)]
struct AvoidCanaries {
    inner: Policy,
}

/// The selection state for one version of the set: a picker over the
/// stable endpoints and one over all of them.
#[derive(Debug)]
struct AvoidCanariesPicker {
    stable: Subset,
    stable_picker: Box<dyn Picker>,
    any_picker: Box<dyn Picker>,
}

impl SelectionPolicy for AvoidCanaries {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        let stable = endpoints.subset(|i| endpoints.labels(i).get("canary") != Some("true"));
        Box::new(AvoidCanariesPicker {
            stable_picker: self.inner.build(&stable.candidates()),
            stable,
            any_picker: self.inner.build(endpoints),
        })
    }
}

impl Picker for AvoidCanariesPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.stable
            .pick(&*self.stable_picker, ctx)
            .or_else(|| self.any_picker.pick(ctx))
    }
}

async fn backend(name: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).insert_header("x-backend", name))
        .mount(&server)
        .await;
    server
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (a, b, canary) = (
        backend("a").await,
        backend("b").await,
        backend("canary").await,
    );
    let balancer = Balancer::builder()
        .endpoint(a.uri())
        .endpoint(b.uri())
        .endpoint(Endpoint::new(canary.uri()).with_label("canary", "true"))
        .policy(Policy::custom(AvoidCanaries {
            inner: Policy::round_robin(),
        }))
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest::Client::new()));

    let send = |count: usize| {
        let client = client.clone();
        async move {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            for _ in 0..count {
                let request = http::Request::get("/").body(reqwest::Body::from(""))?;
                let response = client.clone().oneshot(request).await?;
                let name = response
                    .headers()
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                *seen.entry(name).or_default() += 1;
            }
            Ok::<_, BoxError>(seen)
        }
    };
    println!("all up:               {:?}", send(10).await?);
    balancer.drain(a.uri())?;
    balancer.drain(b.uri())?;
    println!("stable ones drained:  {:?}", send(10).await?);
    Ok(())
}
