//! Endpoint authorities kept for the life of the process, so that pointing
//! a request at an endpoint copies a pointer rather than a shared reference
//! count.
//!
//! An `http::uri::Authority` made from a `String` shares its bytes through a
//! reference count: every request's URI takes one (an atomic add) and gives
//! it back when the request is dropped (an atomic subtract), about 30 ns per
//! request here, and a cache line both cores write when they send to the
//! same endpoint. One made from a `&'static str` costs nothing to copy or
//! drop. So the first [`CAPACITY`] distinct authorities the process sees are
//! kept for good (a few dozen bytes each, at most about 200 KiB in all);
//! past that, authorities are shared as before, so a discovery source that
//! invents new addresses forever cannot grow memory without bound.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use http::uri::Authority;

/// How many distinct authorities are kept for the life of the process.
pub(crate) const CAPACITY: usize = 4_096;

/// `authority`, backed by a copy kept for the life of the process while
/// fewer than [`CAPACITY`] distinct ones are kept; else `authority` itself.
/// Called when an endpoint is parsed, never per request.
pub(crate) fn interned(authority: Authority) -> Authority {
    static KEPT: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut kept = KEPT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let text = match kept.get(authority.as_str()) {
        Some(&text) => text,
        None if kept.len() < CAPACITY => {
            let text: &'static str = Box::leak(authority.as_str().into());
            kept.insert(text);
            text
        }
        None => return authority,
    };
    // The same text parsed before, so this cannot fail; if it did, the
    // shared form still works.
    Authority::from_maybe_shared(bytes::Bytes::from_static(text.as_bytes())).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interned_authority_reads_the_same_and_is_kept_once() {
        let first = interned("127.0.0.1:8080".parse().unwrap());
        let second = interned("127.0.0.1:8080".parse().unwrap());
        assert_eq!(first, "127.0.0.1:8080");
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }

    #[test]
    fn past_the_capacity_authorities_are_still_right_only_shared() {
        // More distinct authorities than are ever kept (other tests intern
        // some too): every one still reads back as itself.
        for i in 0..CAPACITY + 100 {
            let text = format!(
                "10.{}.{}.{}:{}",
                i / 65_536 % 256,
                i / 256 % 256,
                i % 256,
                9000 + i % 7
            );
            let authority: Authority = text.parse().unwrap();
            assert_eq!(interned(authority), text.as_str());
        }
    }
}
