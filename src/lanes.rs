//! Lanes: what every thread would otherwise write at once (an endpoint's
//! counters, a rotation's position, least time's last pick) is kept once
//! per lane, each on cache lines of its own, and each thread writes the lane it
//! maps to. Two cores then write different lines; readers that need the
//! whole sum the lanes.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The most lanes there are (a power of two).
pub(crate) const MAX_LANES: usize = 8;

/// How many distinct lanes an endpoint's counters have: the machine's
/// cores, rounded up to a power of two, at most [`MAX_LANES`].
pub(crate) fn lane_count() -> usize {
    static LANES: OnceLock<usize> = OnceLock::new();
    *LANES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(MAX_LANES)
    })
}

/// One value per lane, each on cache lines of its own: what threads would
/// otherwise all write, such as a rotation's position.
#[derive(Debug, Default)]
pub(crate) struct PerLane<T>([Padded<T>; MAX_LANES]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerLane<T> {
    /// A value per lane, made by `make` from the lane's index.
    pub(crate) fn from_fn(mut make: impl FnMut(usize) -> T) -> Self {
        PerLane(std::array::from_fn(|i| Padded(make(i))))
    }

    /// The first lane's value, whichever thread asks.
    pub(crate) fn first(&self) -> &T {
        &self.0[0].0
    }

    /// Every lane's value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|padded| &padded.0)
    }

    /// This thread's value.
    pub(crate) fn this_threads(&self) -> &T {
        &self.0[this_threads_lane()].0
    }
}

/// The lane this thread writes, below [`MAX_LANES`]: threads take lanes in
/// turn as they first ask. After the first, a read of a plain
/// thread-local (constant-initialised, so no lazy set-up check).
pub(crate) fn this_threads_lane() -> usize {
    const UNSET: usize = usize::MAX;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: Cell<usize> = const { Cell::new(UNSET) };
    }
    LANE.with(|lane| match lane.get() {
        UNSET => {
            let taken = NEXT.fetch_add(1, Ordering::Relaxed) % MAX_LANES;
            lane.set(taken);
            taken
        }
        taken => taken,
    })
}
