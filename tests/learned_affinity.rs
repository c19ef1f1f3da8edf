//! Learned affinity: a backend that issues a session cookie keeps the client
//! that stores it, through the balancer's cookie jar.
#![cfg(feature = "cookies")]

use crate::support;

use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, HttpToReqwest, Policy, RequestKey, SessionKey};
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

fn policy() -> Policy {
    Policy::ring_hash()
        .key(RequestKey::cookie("JSESSIONID"))
        .fallback(Policy::round_robin())
        .into()
}

#[tokio::test]
async fn the_backend_that_set_the_session_cookie_keeps_the_client() {
    let servers: Vec<Server> = futures::future::join_all((0..5).map(|_| Server::start())).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .build()
        .unwrap();

    // Backend "a" issues a session id that hashing alone would place
    // elsewhere, so only learning can bring the client back to it.
    let plain = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .build()
        .unwrap();
    let session = (0..)
        .map(|i| format!("sess-{i}"))
        .find(|s| *plain.locate(&SessionKey::new(s)).unwrap() != *urls[0])
        .unwrap();
    for (i, server) in servers.iter().enumerate() {
        let cookie = if i == 0 {
            session.clone()
        } else {
            format!("other-{i}")
        };
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header(BACKEND, name(i))
                    .insert_header(
                        "set-cookie",
                        format!("JSESSIONID={cookie}; Path=/; HttpOnly"),
                    ),
            )
            .mount(server)
            .await;
    }

    let http = reqwest::Client::builder()
        .cookie_provider(balancer.cookie_jar())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));
    let send = |path: &'static str| {
        let client = client.clone();
        async move { backend_name(&client.oneshot(get(path)).await.unwrap()) }
    };

    // No cookie yet: the fallback (round robin) starts at "a", which sets one.
    assert_eq!(send("/login").await, "a");
    // From then on the stored cookie brings every request back to "a".
    for _ in 0..20 {
        assert_eq!(send("/cart").await, "a");
    }
    assert_eq!(
        balancer.locate(&SessionKey::new(&session)).as_deref(),
        Some(urls[0].as_str())
    );
    // The backend saw its own cookie come back.
    let last = servers[0].received_requests().await.unwrap().pop().unwrap();
    assert_eq!(
        last.headers["cookie"],
        format!("JSESSIONID={session}").as_str()
    );

    // Drained, "a" gets nothing; the session goes where its cookie hashes.
    balancer.drain(&urls[0]).unwrap();
    let moved_to = send("/cart").await;
    assert_ne!(moved_to, "a");
    assert_eq!(received(&servers[0]).await, 21);
}

/// Answers with a random `Set-Cookie` (or none) on each request.
struct RandomCookies {
    name: String,
    rng: std::sync::Mutex<fastrand::Rng>,
}

impl wiremock::Respond for RandomCookies {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let mut rng = self.rng.lock().unwrap();
        let template = ResponseTemplate::new(200).insert_header(BACKEND, self.name.as_str());
        if rng.u8(..4) == 0 {
            return template;
        }
        let value = format!("s{}", rng.u16(..500));
        let value = if rng.bool() {
            value
        } else {
            format!("\"{value}\"")
        };
        let attributes = [
            "",
            "; Secure",
            "; Path=/",
            "; Path=/other",
            "; Max-Age=0",
            "; HttpOnly; Path=/app",
            "; Secure; HttpOnly",
        ];
        let attribute = attributes[rng.usize(..attributes.len())];
        template.insert_header("set-cookie", format!("JSESSIONID={value}{attribute}"))
    }
}

#[tokio::test]
async fn a_request_is_routed_by_the_session_cookie_it_carries_on_the_wire() {
    const REQUESTS: usize = 1_000;
    use reqwest::cookie::CookieStore;

    let servers: Vec<Server> = futures::future::join_all((0..4).map(|_| Server::start())).await;
    for (i, server) in servers.iter().enumerate() {
        Mock::given(any())
            .respond_with(RandomCookies {
                name: name(i),
                rng: std::sync::Mutex::new(fastrand::Rng::with_seed(i as u64)),
            })
            .mount(server)
            .await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .seed(5)
        .build()
        .unwrap();
    let jar = balancer.cookie_jar();
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));
    let wire_url = reqwest::Url::parse(&format!("{}/app/page", urls[0])).unwrap();
    let mut keyed = 0;
    for _ in 0..REQUESTS {
        // What reqwest will put on the wire, whichever backend it goes to
        // (all are plain http under one site).
        let cookie = jar.cookies(&wire_url);
        let session = cookie.as_ref().and_then(|header| {
            header.to_str().ok()?.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == "JSESSIONID" && !value.is_empty())
                    .then(|| value.trim_matches('"').to_owned())
            })
        });
        let expected = session
            .as_ref()
            .map(|s| balancer.locate(&SessionKey::new(s)).unwrap());
        let response = client.clone().oneshot(get("/app/page")).await.unwrap();
        let served_by = backend_name(&response);
        if let Some(expected) = expected {
            keyed += 1;
            let home = urls.iter().position(|u| **u == *expected).unwrap();
            assert_eq!(served_by, name(home), "session {session:?}");
        }
    }
    println!("learned affinity: {keyed} of {REQUESTS} requests carried a session cookie, each routed by it");
    assert!(
        keyed > REQUESTS / 4,
        "too few requests carried a cookie: {keyed}"
    );
}

#[tokio::test]
async fn a_secure_cookie_that_plain_http_will_not_send_does_not_route() {
    let servers: Vec<Server> = futures::future::join_all((0..2).map(|_| Server::start())).await;
    // "a" sets a plain session cookie for the whole site; "b" a Secure one
    // for /app, which reqwest never sends over plain http.
    let cookies = ["JSESSIONID=plain; Path=/", "JSESSIONID=secret; Secure"];
    for (i, server) in servers.iter().enumerate() {
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header(BACKEND, name(i))
                    .insert_header("set-cookie", cookies[i]),
            )
            .mount(server)
            .await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .cookie_provider(balancer.cookie_jar())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));
    let send = |path: &'static str| {
        let client = client.clone();
        async move { backend_name(&client.oneshot(get(path)).await.unwrap()) }
    };
    assert_eq!(send("/login").await, "a");
    // With "a" drained, "b" serves /app/page and sets its Secure cookie.
    balancer.drain(&urls[0]).unwrap();
    assert_eq!(send("/app/page").await, "b");
    balancer.set_weight(&urls[0], 1).unwrap();
    // The wire carries only "plain": the request goes to "a", which issued it.
    for _ in 0..5 {
        assert_eq!(send("/app/page").await, "a");
    }
    let last = servers[0].received_requests().await.unwrap().pop().unwrap();
    assert_eq!(last.headers["cookie"], "JSESSIONID=plain");
}

#[tokio::test]
async fn a_learned_home_that_is_ejected_gets_no_requests() {
    let a = Server::start().await;
    let b = Server::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header(BACKEND, "a")
                .insert_header("set-cookie", "JSESSIONID=sess-a; Path=/"),
        )
        .mount(&a)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).insert_header(BACKEND, "b"))
        .mount(&b)
        .await;
    let balancer = Balancer::builder()
        .endpoint(a.uri())
        .endpoint(b.uri())
        .policy(policy())
        .build()
        .unwrap();
    let client = client(&balancer);
    let with_cookie = || {
        http::Request::get("/")
            .header("cookie", "JSESSIONID=sess-a")
            .body(reqwest::Body::from(""))
            .unwrap()
    };
    // "a" issues the session (learned), then fails five times: ejected.
    assert_eq!(send(&client, "/").await.unwrap(), "a");
    for _ in 0..4 {
        client.clone().oneshot(with_cookie()).await.unwrap();
    }
    assert!(balancer.stats().endpoint(a.uri()).unwrap().ejected);
    for _ in 0..20 {
        let response = client.clone().oneshot(with_cookie()).await.unwrap();
        assert_eq!(backend_name(&response), "b");
    }
    assert_eq!(received(&a).await, 5);
}
