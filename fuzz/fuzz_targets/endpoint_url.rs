//! Any string as an endpoint URL: refused with `InvalidUrl`, or accepted
//! under a canonical name that parses back to itself and manages it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_lb::{Balancer, Error};

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    match Balancer::builder().endpoint(url).build() {
        Ok(balancer) => {
            let name = balancer.stats().endpoints[0].url.clone();
            let again = Balancer::builder().endpoint(&name).build().expect("the name parses");
            assert_eq!(again.stats().endpoints[0].url, name);
            balancer.set_weight(&name, 2).expect("the name manages it");
        }
        Err(Error::InvalidUrl { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("unexpected {other:?}"),
    }
});
