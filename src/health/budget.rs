//! A retry budget (Finagle's, as in `tower::retry::budget`): retries are
//! allowed up to a share of the requests of the last `ttl`, plus a small
//! reserve per second, so that retries cannot multiply an outage.
//!
//! tower's `TpsBudget` takes a mutex on every deposit; this one keeps one
//! bucket per second in a ring of atomics, so the request path takes no lock;
//! a bucket counts its deposits (one per request) in lanes (see
//! `lanes.rs`), so two cores sending at once do not write one line.
//! Two requests racing on a bucket that is being recycled may lose a count:
//! a budget, not a ledger.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::lanes::PerLane;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    clock: Clock,
    buckets: Box<[Bucket]>,
    /// Retries allowed per request deposited.
    share: f64,
    /// Retries allowed per second with no requests at all.
    reserve_per_second: f64,
    /// Withdrawals granted and refused, by [`Extra`] kind.
    granted: [AtomicU64; 2],
    refused: [AtomicU64; 2],
}

/// What an extra attempt is, for the budget's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extra {
    /// Sent again after a failed attempt.
    Retry = 0,
    /// Sent beside an attempt still waiting.
    Hedge = 1,
}

/// The budget's counts since it was made, by kind (retry, hedge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BudgetCounts {
    pub(crate) granted: [u64; 2],
    pub(crate) refused: [u64; 2],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second (since `epoch`) this bucket counts, plus one; 0 = never used.
    second: AtomicU64,
    /// Requests sent in that second, counted per lane.
    deposits: PerLane<AtomicI64>,
    withdrawals: AtomicI64,
}

impl RetryBudget {
    /// `ttl`: the window, in whole seconds (at least 1); `share`: retries per
    /// request; `reserve_per_second`: retries allowed on top.
    pub(crate) fn new(clock: Clock, ttl: Duration, share: f64, reserve_per_second: u32) -> Self {
        let seconds = ttl.as_secs().max(1) as usize;
        RetryBudget {
            clock,
            buckets: (0..seconds).map(|_| Bucket::default()).collect(),
            share,
            reserve_per_second: f64::from(reserve_per_second),
            granted: Default::default(),
            refused: Default::default(),
        }
    }

    fn current(&self) -> (&Bucket, u64) {
        self.bucket_at(self.clock.now())
    }

    fn bucket_at(&self, now: Instant) -> (&Bucket, u64) {
        let second = self.clock.elapsed(now).as_secs() + 1;
        let bucket = &self.buckets[second as usize % self.buckets.len()];
        let seen = bucket.second.load(Ordering::Relaxed);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket
                .deposits
                .iter()
                .for_each(|d| d.store(0, Ordering::Relaxed));
            bucket.withdrawals.store(0, Ordering::Relaxed);
        }
        (bucket, second)
    }

    /// Counts one request.
    /// Counts one request sent at `now` (a reading of the budget's clock
    /// the caller has already made).
    pub(crate) fn deposit_at(&self, now: Instant) {
        self.bucket_at(now)
            .0
            .deposits
            .this_threads()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request.
    #[cfg(test)]
    pub(crate) fn deposit(&self) {
        self.deposit_at(self.clock.now());
    }

    /// Takes one extra attempt of kind `kind` from the budget, if there is
    /// one; counts the grant or the refusal.
    pub(crate) fn withdraw(&self, kind: Extra) -> bool {
        let granted = self.try_withdraw();
        let counts = if granted {
            &self.granted
        } else {
            &self.refused
        };
        counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        granted
    }

    /// The grants and refusals so far.
    pub(crate) fn counts(&self) -> BudgetCounts {
        let load = |c: &[AtomicU64; 2]| c.each_ref().map(|c| c.load(Ordering::Relaxed));
        BudgetCounts {
            granted: load(&self.granted),
            refused: load(&self.refused),
        }
    }

    fn try_withdraw(&self) -> bool {
        let (bucket, now) = self.current();
        let window = self.buckets.len() as u64;
        let (mut deposits, mut withdrawals) = (0i64, 0i64);
        for b in self.buckets.iter() {
            let second = b.second.load(Ordering::Relaxed);
            if second != 0 && now - second.min(now) < window {
                deposits += b
                    .deposits
                    .iter()
                    .map(|d| d.load(Ordering::Relaxed))
                    .sum::<i64>();
                withdrawals += b.withdrawals.load(Ordering::Relaxed);
            }
        }
        let allowed = deposits as f64 * self.share + self.reserve_per_second * window as f64;
        if (withdrawals as f64) + 1.0 > allowed {
            return false;
        }
        bucket.withdrawals.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_reserve() {
        let budget = RetryBudget::new(Clock::default(), Duration::from_secs(10), 0.2, 0);
        assert!(
            !budget.withdraw(Extra::Retry),
            "no requests, no reserve: no retry"
        );
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw(Extra::Retry)).count();
        assert_eq!(granted, 20);

        let reserve = RetryBudget::new(Clock::default(), Duration::from_secs(10), 0.0, 1);
        let granted = (0..100).filter(|_| reserve.withdraw(Extra::Retry)).count();
        assert_eq!(granted, 10, "one a second over a ten-second window");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_leave_the_budget_when_their_window_has_passed() {
        let budget = RetryBudget::new(Clock::default(), Duration::from_secs(10), 0.2, 0);
        for _ in 0..100 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            (0..10).filter(|_| budget.withdraw(Extra::Retry)).count(),
            10
        );
        // Eleven seconds after the deposits they no longer count.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!budget.withdraw(Extra::Retry));
        // Once the retries have left the window too, new requests count alone.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!((0..10).filter(|_| budget.withdraw(Extra::Retry)).count(), 2);
    }
}
