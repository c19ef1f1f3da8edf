//! Hostile request-targets through every front end, against a real backend
//! whose endpoint URL has a base path: what the backend receives for each,
//! or the error the caller gets. The same table is in docs/targets.md.
//!
//! `cargo test --all-features --test integration hostile_targets:: -- --nocapture`
//! prints the table.
#![cfg(feature = "reqwest-middleware")]

use crate::support;

use support::*;
use tower::{Layer, ServiceExt};
use tower_lb::{Balancer, Error, HttpToReqwest, Policy, TargetRefusal};

/// What one front end did with a target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// The backend received this path and query.
    Received(String),
    /// Refused before sending, with this reason.
    Refused(TargetRefusal),
    /// The front end's own type cannot hold the target (`http::Uri` or
    /// `reqwest::Url` refused to parse it).
    Unparsable,
}

use Seen::*;

const BASE: &str = "/api";

fn recv(path: &str) -> Seen {
    Received(path.to_owned())
}

/// Each target, with what the `http::Request` front ends (the layer,
/// `select` + `route`) and the `reqwest::Request` front ends (the layer,
/// the middleware) give. reqwest parses a target into a `Url`, which
/// resolves dot segments before the balancer sees it: `/../x` arrives as
/// `/x`, so it is routed inside the base path rather than refused.
fn table() -> Vec<(&'static str, Seen, Seen)> {
    use TargetRefusal::*;
    vec![
        (
            "/users/42?full=1",
            recv("/api/users/42?full=1"),
            recv("/api/users/42?full=1"),
        ),
        ("/", recv("/api/"), recv("/api/")),
        ("?q=1", Unparsable, recv("/api/?q=1")),
        ("http://backend?q=1", recv("/api/?q=1"), recv("/api/?q=1")),
        ("/a/./b/../c", recv("/api/a/c"), recv("/api/a/c")),
        ("/a/b/..", recv("/api/a/"), recv("/api/a/")),
        (
            "/.well-known/x",
            recv("/api/.well-known/x"),
            recv("/api/.well-known/x"),
        ),
        ("/a%2Fb", recv("/api/a%2Fb"), recv("/api/a%2Fb")),
        ("/x#frag", recv("/api/x"), recv("/api/x")),
        ("/../x", Refused(LeavesBasePath), recv("/api/x")),
        ("/a/../../x", Refused(LeavesBasePath), recv("/api/x")),
        ("/%2e%2e/x", Refused(LeavesBasePath), recv("/api/x")),
        ("/%2E./admin", Refused(LeavesBasePath), recv("/api/admin")),
        (
            "http://backend/../x",
            Refused(LeavesBasePath),
            recv("/api/x"),
        ),
        (
            "/..%2fadmin",
            Refused(LeavesBasePath),
            Refused(LeavesBasePath),
        ),
        (
            "/a/..%5c..%5cadmin",
            Refused(LeavesBasePath),
            Refused(LeavesBasePath),
        ),
        ("/..\\admin", Refused(LeavesBasePath), recv("/api/admin")),
        ("x", Refused(AuthorityForm), Unparsable),
        ("backend:8080", Refused(AuthorityForm), Unparsable),
        ("*", Refused(AsteriskForm), Unparsable),
        // The credentials become an `Authorization` header on every front
        // end: `url_credentials_become_the_same_basic_authorization_on_every_front_end`.
        ("http://user:pw@backend/x", recv("/api/x"), recv("/api/x")),
        (
            "https://elsewhere:9/x?y=1",
            recv("/api/x?y=1"),
            recv("/api/x?y=1"),
        ),
    ]
}

/// The URL a reqwest caller would write for `target`.
fn reqwest_url(target: &str) -> Option<reqwest::Url> {
    let text = if target.starts_with('/') || target.starts_with('?') {
        format!("http://backend{target}")
    } else if target.starts_with("http") {
        target.to_owned()
    } else {
        return None;
    };
    reqwest::Url::parse(&text).ok()
}

/// The path and query of the one request `server` received since the last
/// call, or `None`.
async fn last_received(server: &Server, before: usize) -> Option<String> {
    let requests = server.received_requests().await.unwrap_or_default();
    if requests.len() == before {
        return None;
    }
    assert_eq!(requests.len(), before + 1, "one request, sent once");
    let url = &requests[before].url;
    Some(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    })
}

/// What the caller got, with what the backend received.
async fn seen(result: Result<(), Error>, server: &Server, before: usize) -> Seen {
    let received = last_received(server, before).await;
    match result {
        Ok(()) => Received(received.expect("an answered request reached the backend")),
        Err(Error::InvalidTarget { reason, .. }) => {
            assert_eq!(received, None, "a refused request was sent");
            Refused(reason)
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn hostile_targets_never_leave_the_base_path_on_any_front_end() {
    let server = backend("a", wiremock::ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(format!("{}{BASE}", server.uri()))
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let http_layer = balancer.layer().layer(HttpToReqwest::new(plain_reqwest()));
    let reqwest_layer = balancer.layer().layer(plain_reqwest());
    let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();

    let mut rows = Vec::new();
    let mut outside = 0;
    let mut mismatches = Vec::new();
    for (target, http_expected, reqwest_expected) in table() {
        let mut row = vec![];
        // 1. The layer over `http::Request`.
        let uri = target.parse::<http::Uri>().ok();
        let before = received(&server).await;
        let layer_http = match &uri {
            Some(uri) => {
                let request = http::Request::get(uri.clone())
                    .body(reqwest::Body::from(""))
                    .unwrap();
                let result = http_layer.clone().oneshot(request).await.map(drop);
                seen(result, &server, before).await
            }
            None => Unparsable,
        };
        row.push(layer_http);
        // 2. `select` + `route` with an `http::Request`, sent by reqwest.
        let before = received(&server).await;
        let selected = match &uri {
            Some(uri) => {
                let mut request = http::Request::get(uri.clone())
                    .body(reqwest::Body::from(""))
                    .unwrap();
                let selection = balancer.select(&request).unwrap();
                let result = match selection.route(&mut request) {
                    Ok(()) => {
                        let request = reqwest::Request::try_from(request).unwrap();
                        let response = plain_reqwest().execute(request).await.unwrap();
                        selection.finish(response.status());
                        Ok(())
                    }
                    Err(error) => Err(error),
                };
                seen(result, &server, before).await
            }
            None => Unparsable,
        };
        row.push(selected);
        // 3. The layer over `reqwest::Request`, and 4. the middleware.
        let url = reqwest_url(target);
        let before = received(&server).await;
        let layer_reqwest = match &url {
            Some(url) => {
                let request = reqwest::Request::new(http::Method::GET, url.clone());
                let result = reqwest_layer.clone().oneshot(request).await.map(drop);
                seen(result, &server, before).await
            }
            None => Unparsable,
        };
        row.push(layer_reqwest);
        let before = received(&server).await;
        let via_middleware = match &url {
            Some(url) => {
                let result =
                    middleware.get(url.clone()).send().await.map(drop).map_err(
                        |error| match error {
                            reqwest_middleware::Error::Middleware(error) => {
                                error.downcast::<Error>().unwrap()
                            }
                            other => panic!("{other:?}"),
                        },
                    );
                seen(result, &server, before).await
            }
            None => Unparsable,
        };
        row.push(via_middleware);

        for seen in &row {
            if let Received(path) = seen {
                if !path.starts_with(&format!("{BASE}/")) {
                    outside += 1;
                }
            }
        }
        if (&row[0], &row[1]) != (&http_expected, &http_expected) {
            mismatches.push(format!("{target:?} via http::Request: {row:?}"));
        }
        if (&row[2], &row[3]) != (&reqwest_expected, &reqwest_expected) {
            mismatches.push(format!("{target:?} via reqwest::Request: {row:?}"));
        }
        rows.push((target, row));
    }
    println!(
        "| target | layer, http::Request | select + route | layer, reqwest::Request | middleware |"
    );
    println!("|---|---|---|---|---|");
    for (target, row) in &rows {
        let cells: Vec<String> = row.iter().map(|s| format!("{s:?}")).collect();
        println!("| `{target}` | {} |", cells.join(" | "));
    }
    assert_eq!(outside, 0, "requests reached the backend outside {BASE}");
    assert!(
        mismatches.is_empty(),
        "not as the table says:\n{}",
        mismatches.join("\n")
    );
}

/// The user-info rule (docs/targets.md) through every front end, against a
/// wiremock backend: the URL's percent-decoded user and password arrive as
/// the `Authorization: Basic` header reqwest's own builder makes, once, and
/// no request line or `Host` carries them; an `Authorization` header the
/// request already has wins, and the URL's credentials are not sent.
#[tokio::test]
async fn url_credentials_become_the_same_basic_authorization_on_every_front_end() {
    use http::header::{AUTHORIZATION, HOST};

    let server = backend("a", wiremock::ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(format!("{}{BASE}", server.uri()))
        .build()
        .unwrap();
    let http_layer = balancer.layer().layer(HttpToReqwest::new(plain_reqwest()));
    let reqwest_layer = balancer.layer().layer(plain_reqwest());
    let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();

    let target = "http://us%40er:p%3Aw%20rd@backend/x?q=1";
    // What reqwest's RequestBuilder itself puts in the header.
    let reference = plain_reqwest().get(target).build().unwrap();
    let expected = reference.headers()[AUTHORIZATION].clone();
    assert_eq!(reference.url().username(), "", "reqwest moved them");
    let url = reqwest::Url::parse(target).unwrap();
    assert_eq!(url.username(), "us%40er", "Request::new keeps them");

    for explicit in [None, Some("Bearer token")] {
        let add = |headers: &mut http::HeaderMap| {
            if let Some(value) = explicit {
                headers.insert(AUTHORIZATION, http::HeaderValue::from_static(value));
            }
        };
        let http_request = || {
            let mut request = http::Request::get(target)
                .body(reqwest::Body::from(""))
                .unwrap();
            add(request.headers_mut());
            request
        };
        let reqwest_request = || {
            let mut request = reqwest::Request::new(http::Method::GET, url.clone());
            add(request.headers_mut());
            request
        };
        let mut front_ends: Vec<(&str, Result<u16, String>)> = Vec::new();
        let status = |r: Result<reqwest::Response, String>| r.map(|r| r.status().as_u16());
        front_ends.push((
            "layer, http::Request",
            status(
                http_layer
                    .clone()
                    .oneshot(http_request())
                    .await
                    .map_err(|e| e.to_string()),
            ),
        ));
        let mut request = http_request();
        let selection = balancer.select(&request).unwrap();
        let routed = match selection.route(&mut request) {
            Ok(()) => {
                let request = reqwest::Request::try_from(request).unwrap();
                status(
                    plain_reqwest()
                        .execute(request)
                        .await
                        .map_err(|e| e.to_string()),
                )
            }
            Err(error) => Err(error.to_string()),
        };
        front_ends.push(("select + route", routed));
        front_ends.push((
            "layer, reqwest::Request",
            status(
                reqwest_layer
                    .clone()
                    .oneshot(reqwest_request())
                    .await
                    .map_err(|e| e.to_string()),
            ),
        ));
        front_ends.push((
            "middleware, Request::new",
            status(
                middleware
                    .execute(reqwest_request())
                    .await
                    .map_err(|e| e.to_string()),
            ),
        ));
        if explicit.is_none() {
            // reqwest's builder moved the credentials before the
            // middleware sees the request (with an explicit header too, it
            // would send both: reqwest's own doing, docs/targets.md).
            front_ends.push((
                "middleware, RequestBuilder",
                status(
                    middleware
                        .get(target)
                        .send()
                        .await
                        .map_err(|e| e.to_string()),
                ),
            ));
        }

        for (front_end, result) in &front_ends {
            assert_eq!(*result, Ok(200), "{front_end}, {explicit:?}");
        }
        let received = server.received_requests().await.unwrap();
        let last = &received[received.len() - front_ends.len()..];
        for ((front_end, _), request) in front_ends.iter().zip(last) {
            let sent: Vec<_> = request.headers.get_all(AUTHORIZATION).iter().collect();
            let want = explicit.map_or(expected.clone(), http::HeaderValue::from_static);
            assert_eq!(sent, [&want], "{front_end}, {explicit:?}");
            assert_eq!(request.url.path(), "/api/x", "{front_end}");
            assert_eq!(request.url.query(), Some("q=1"), "{front_end}");
            let host = request.headers[HOST].to_str().unwrap();
            assert!(!host.contains('@'), "{front_end}: Host {host}");
            assert_eq!(request.url.username(), "", "{front_end}");
        }
    }
}
