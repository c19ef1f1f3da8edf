//! Handles on a balancer, one per lane (see `lanes.rs`), for the requests
//! that may be retried. Such a request must keep its balancer alive until
//! it ends (the service that sent it may be gone by then, as with
//! `oneshot`), and a retry needs a service to go through; a clone of the
//! [`Balancer`] (or of a shared inner service such as a `reqwest::Client`)
//! writes one reference count that every core shares. A lane's handle is
//! counted on cache lines of its own, so two cores sending at once write
//! different lines, and the inner service is cloned only for a retry that
//! happens.
//!
//! A lane's handle is made at the first request on that lane that may be
//! retried, with a copy of the service that sent it; clones of a service
//! share the handles.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::Balancer;
use crate::lanes::PerLane;

/// A strong handle on a balancer, with a copy of the inner service retries
/// go through (none for a front end with a service per endpoint), alone on
/// its cache lines.
///
/// The copy sits behind a mutex, taken only to clone it for a retry that
/// happens, so that the handle is `Sync` (and a response future holding
/// it `Send`) whenever the service is `Send`, as before handles.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LaneHandle<S> {
    balancer: Balancer,
    service: Option<(Mutex<S>, CloneFn<S>)>,
}

/// `S::clone`, kept beside a service of a type not known to be `Clone`.
type CloneFn<S> = fn(&S) -> S;

impl<S> LaneHandle<S> {
    /// The balancer held.
    pub(crate) fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Whether retries have a service here to go through.
    pub(crate) fn has_service(&self) -> bool {
        self.service.is_some()
    }

    /// A clone of the inner service, for a retry.
    pub(crate) fn clone_service(&self) -> Option<S> {
        let (service, clone) = self.service.as_ref()?;
        let service = service.lock().unwrap_or_else(PoisonError::into_inner);
        Some(clone(&service))
    }
}

/// Each lane's [`LaneHandle`], made at the lane's first request that may
/// be retried.
#[derive(Debug)]
pub(crate) struct LaneHandles<S>(PerLane<OnceLock<Arc<LaneHandle<S>>>>);

impl<S> Default for LaneHandles<S> {
    fn default() -> Self {
        LaneHandles(PerLane::from_fn(|_| OnceLock::new()))
    }
}

impl<S> LaneHandles<S> {
    /// A hold on `balancer` through this thread's lane, whose handle
    /// carries a copy of `service` if the lane's first hold gave one.
    #[inline]
    pub(crate) fn hold(
        &self,
        balancer: &Balancer,
        service: Option<(&S, CloneFn<S>)>,
    ) -> Arc<LaneHandle<S>> {
        self.0
            .this_threads()
            .get_or_init(|| {
                Arc::new(LaneHandle {
                    balancer: balancer.clone(),
                    service: service.map(|(s, clone)| (Mutex::new(clone(s)), clone)),
                })
            })
            .clone()
    }
}
