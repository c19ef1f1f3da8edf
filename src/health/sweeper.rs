//! What drives outlier detection on the clock: a small tokio task per
//! balancer that ends ejections at their time and runs the interval sweep,
//! even when no request arrives.
//!
//! Why a task: the statistical detectors need a sweep at every interval and
//! an ejection must end (with its event, and its place in stats) at its
//! time, both with no request in sight; a sweep run by "the first request
//! after the boundary" would need a clock read on every request, and would
//! never run for an idle balancer. The task holds only a `Weak` of the
//! balancer's health and a `Notify`: it keeps nothing alive, takes no lock
//! a request takes, sleeps until the next thing due (an ejection's end, or
//! the next interval when a detector or a multiplier needs it; nothing when
//! nothing is pending), and ends as soon as the balancer's health is
//! dropped (its `Drop` wakes the task, which then finds nothing to
//! upgrade).
//!
//! A balancer built outside a tokio runtime starts its task from the first
//! pick made inside one (so does one whose runtime shut down under its
//! task); until then (a balancer used only through
//! `Balancer::select` on plain threads) picks run the sweep themselves when
//! it is due, and end ejections as they always do.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::book::HealthShared;

impl HealthShared {
    /// Starts the sweeper on the current tokio runtime, if there is one and
    /// none runs yet; whether one runs now.
    pub(super) fn start_sweeper(&self) -> bool {
        if self.swept_by_task.load(Ordering::Relaxed) {
            return true;
        }
        if self.this.strong_count() == 0 {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self
            .swept_by_task
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return true;
        }
        runtime.spawn(run(self.this.clone(), self.wake.clone()));
        true
    }
}

/// Marks the sweeper as gone when its future is dropped (its runtime shut
/// down, the balancer living on): the next pick in a runtime starts
/// another.
struct Running(Weak<HealthShared>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(health) = self.0.upgrade() {
            health.swept_by_task.store(false, Ordering::Relaxed);
        }
    }
}

/// The sweeper's life: sweep, sleep until the next thing due or a wake-up,
/// again; until the health it serves is gone.
async fn run(health: Weak<HealthShared>, wake: Arc<Notify>) {
    let _running = Running(health.clone());
    loop {
        let deadline = {
            let Some(health) = health.upgrade() else {
                return;
            };
            health.sweep(health.now_ms());
            health.next_deadline().map(|ms| health.clock.at_ms(ms))
        };
        match deadline {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}
