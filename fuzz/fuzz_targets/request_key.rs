//! Any `Cookie` and key-header bytes: a key or none, never a panic; the
//! cookie source reads the named cookie.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower_lb::{Balancer, Policy, RequestKey};

static BALANCER: OnceLock<Balancer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (cookie, header) = data.split_at(data.len() / 2);
    let balancer = BALANCER.get_or_init(|| {
        Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .endpoint("http://127.0.0.1:8082")
            .policy(
                Policy::ring_hash().key(RequestKey::cookie("sid").or(RequestKey::header("x-user"))),
            )
            .build()
            .expect("a valid balancer")
    });
    let mut request = http::Request::get("/").body(()).expect("a request");
    if let Ok(value) = http::HeaderValue::from_bytes(cookie) {
        request.headers_mut().insert(http::header::COOKIE, value);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        request.headers_mut().insert("x-user", value);
    }
    drop(balancer.select(&request).expect("an endpoint"));
});
