//! tower-lb inside an axum application: the balanced client is kept in the
//! application's state, under a type the application names, and a handler
//! calls two backends through it.
//!
//! Run it with `cargo run --example axum`. It starts two backends and the application on
//! 127.0.0.1, sends the application 40 requests, prints where they went and
//! stops.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{BalanceService, Balancer, HttpToReqwest, Policy};

/// The balanced client as the application stores it: cheap to clone, `Send`
/// and `Sync`, as axum's state must be. A stack with more layers on top (a
/// timeout, a concurrency limit) can be stored as
/// `tower::util::BoxCloneSyncService<http::Request<reqwest::Body>, reqwest::Response, BoxError>`.
type Upstream = BalanceService<HttpToReqwest>;

/// The application's state.
#[derive(Clone)]
struct AppState {
    users: Upstream,
}

/// `GET /profile/{id}`: asks a users backend for the user, through the
/// balancer, and answers with what it said.
async fn profile(
    State(state): State<AppState>,
    Path(id): Path<u32>,
) -> Result<String, (StatusCode, String)> {
    let request = http::Request::get(format!("/users/{id}"))
        .body(reqwest::Body::from(""))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // `oneshot` waits for the balancer to be ready, then sends. Its error
    // (no endpoint available, a connection refused) names what went wrong.
    let response = state
        .users
        .oneshot(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    if !status.is_success() {
        return Err((StatusCode::BAD_GATEWAY, format!("users answered {status}")));
    }
    Ok(body)
}

/// Starts a users backend on 127.0.0.1 that names itself in its answers, and
/// returns its URL.
async fn start_backend(name: &'static str) -> std::io::Result<String> {
    let app = Router::new().route(
        "/users/{id}",
        get(move |Path(id): Path<u32>| async move { format!("user {id} from {name}") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let users_a = start_backend("users-a").await?;
    let users_b = start_backend("users-b").await?;

    // users-b has three times users-a's weight.
    let balancer = Balancer::builder()
        .endpoint(&users_a)
        .endpoint_weighted(&users_b, 3)
        .policy(Policy::weighted_round_robin())
        .build()?;
    let state = AppState {
        users: ServiceBuilder::new()
            .layer(balancer.layer())
            .service(HttpToReqwest::new(reqwest::Client::new())),
    };
    let app = Router::new()
        .route("/profile/{id}", get(profile))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("tower-lb in axum: the application at {app_url}, users-a {users_a} (weight 1), users-b {users_b} (weight 3)");
    let client = reqwest::Client::new();
    let mut answered_by: BTreeMap<String, u32> = BTreeMap::new();
    for id in 0..40 {
        let response = client.get(format!("{app_url}/profile/{id}")).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(format!("the application answered {status}: {body}").into());
        }
        let backend = body.rsplit(' ').next().unwrap_or("?").to_owned();
        *answered_by.entry(backend).or_default() += 1;
    }

    println!("{:<10} {:>8}", "backend", "requests");
    for (backend, count) in &answered_by {
        println!("{backend:<10} {count:>8}");
    }
    let stats = balancer.stats();
    println!(
        "balancer: {} requests, {} in flight",
        stats.requests(),
        stats.in_flight()
    );
    // Smooth weighted round robin gives exact shares: 10 and 30 of 40.
    let (a, b) = (answered_by.get("users-a"), answered_by.get("users-b"));
    if (a, b) != (Some(&10), Some(&30)) {
        return Err(format!("expected users-a 10 and users-b 30, got {answered_by:?}").into());
    }
    Ok(())
}
