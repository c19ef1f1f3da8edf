//! Handles on a balancer, one per lane (see `lanes.rs`), for the requests
//! that may be retried. Such a request must keep its balancer alive until
//! it ends (the service that sent it may be gone by then, as with
//! `oneshot`), and a retry needs a service to go through; a clone of the
//! [`Balancer`] (or of a shared inner service such as a `reqwest::Client`)
//! writes one reference count that every core shares. A lane's handle is
//! counted on cache lines of its own, so two cores sending at once write
//! different lines, and the inner service is cloned only for a retry that
//! happens.

use std::sync::Arc;

use super::Balancer;
use crate::lanes::PerLane;

/// A strong handle on a balancer, with a copy of the inner service retries
/// go through (none for a front end with a service per endpoint), alone on
/// its cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LaneHandle<S> {
    balancer: Balancer,
    /// The service, and how to clone it (so that the response future,
    /// which also serves services that are not `Clone`, needs no bound).
    service: Option<(S, CloneFn<S>)>,
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
        self.service.as_ref().map(|(service, clone)| clone(service))
    }
}

/// One [`LaneHandle`] per lane, made once for a front end and its clones.
#[derive(Debug)]
pub(crate) struct LaneHandles<S>(PerLane<Arc<LaneHandle<S>>>);

impl<S: Clone> LaneHandles<S> {
    /// Handles on `balancer`, each with a clone of `service` if given.
    pub(crate) fn new(balancer: &Balancer, service: Option<&S>) -> Self {
        LaneHandles(PerLane::from_fn(|_| {
            Arc::new(LaneHandle {
                balancer: balancer.clone(),
                service: service.map(|s| (s.clone(), S::clone as CloneFn<S>)),
            })
        }))
    }
}

impl<S> LaneHandles<S> {
    /// A hold on the balancer through this thread's lane.
    #[inline]
    pub(crate) fn hold(&self) -> Arc<LaneHandle<S>> {
        self.0.this_threads().clone()
    }
}
