//! Any request target, routed to an endpoint with a base path: a URI on the
//! endpoint's scheme and authority, or `InvalidRequest` (a target that cannot
//! be joined to the base path), or `InvalidTarget` (one that would leave
//! the base path, or of a form the balancer does not route).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_lb::{Balancer, Error};

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:8080/api")
        .build()
        .expect("a valid endpoint");
    let mut request = http::Request::get(uri).body(()).expect("a request");
    let selection = balancer.select(&request).expect("an endpoint");
    match selection.route(&mut request) {
        Ok(()) => assert_eq!(
            request.uri().authority().map(|a| a.as_str()),
            Some("127.0.0.1:8080")
        ),
        Err(Error::InvalidRequest { .. } | Error::InvalidTarget { .. }) => {}
        Err(other) => panic!("unexpected {other:?}"),
    }
});
