//! Outlier detection against a model, over random sequences of requests,
//! outcomes (some landing late), clock advances, adds, removes, drains and
//! weight changes, on tokio's paused clock.
//!
//! The model is the documented behaviour written plainly (no atomics, no
//! concurrency): consecutive failures eject for `base × times` (at most
//! `max`), the multiplier going up while `base × times` is below `max` and
//! down by one at every interval sweep an interval or more after the
//! return (Envoy); at most `max_ejection_percent` of the active set (at
//! least one) is out; an ejection ends at its time (the sweeper, or the
//! next pick), in panic mode too; a returning, refused, drained or re-added endpoint
//! starts with clean counts, and answers to requests sent before such a
//! change do not count. After every step the balancer's stats must match it,
//! and the invariants the docs promise are checked by name.
//!
//! `cargo test --test properties_health`

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_lb::{Balancer, OutlierDetection, Policy, Retries, Selection};

const POOL: usize = 8;

fn url(i: usize) -> String {
    format!("http://10.0.0.{}:8080", i + 1)
}

#[derive(Clone, Debug)]
enum Step {
    Send { fail: bool, hold: bool },
    Finish { index: usize, fail: bool },
    Cancel { index: usize },
    Advance { ms: u64 },
    Add { endpoint: usize, weight: u32 },
    Remove { endpoint: usize },
    SetWeight { endpoint: usize, weight: u32 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<bool>(), prop::bool::weighted(0.3)).prop_map(|(fail, hold)| Step::Send { fail, hold }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(index, fail)| Step::Finish { index, fail }),
        1 => any::<usize>().prop_map(|index| Step::Cancel { index }),
        3 => (0u64..1_500).prop_map(|ms| Step::Advance { ms }),
        1 => (0..POOL, 0u32..4).prop_map(|(endpoint, weight)| Step::Add { endpoint, weight }),
        1 => (0..POOL).prop_map(|endpoint| Step::Remove { endpoint }),
        1 => (0..POOL, 0u32..4).prop_map(|(endpoint, weight)| Step::SetWeight { endpoint, weight }),
    ]
}

#[derive(Clone, Debug)]
struct Config {
    threshold: u32,
    percent: u32,
    panic: u32,
    base_ms: u64,
    max_ms: u64,
    interval_ms: u64,
    policy: u8,
}

fn config() -> impl Strategy<Value = Config> {
    (
        1u32..4,
        prop_oneof![Just(10u32), Just(34), Just(50), Just(100)],
        prop_oneof![Just(0u32), Just(50)],
        100u64..2_000,
        1u64..5,
        200u64..3_000,
        0u8..4,
    )
        .prop_map(
            |(threshold, percent, panic, base_ms, factor, interval_ms, policy)| Config {
                threshold,
                percent,
                panic,
                base_ms,
                max_ms: base_ms * factor,
                interval_ms,
                policy,
            },
        )
}

/// One endpoint's health in the model: an instance lives from an add to
/// its removal; a later add of the same URL is a new instance.
#[derive(Clone, Debug, Default)]
struct Instance {
    epoch: u64,
    streak: u32,
    until: Option<u64>,
    times: u32,
    returned: u64,
    retired: bool,
}

struct Model {
    config: Config,
    instances: Vec<Instance>,
    /// URL index → (instance, weight) while in the set.
    members: Vec<Option<(usize, u32)>>,
    /// Ejected instances with their end, in the order ejected.
    book: Vec<(usize, u64)>,
    /// When the next interval sweep is due.
    next_sweep: u64,
}

impl Model {
    fn active(&self) -> usize {
        self.members
            .iter()
            .flatten()
            .filter(|(_, w)| *w > 0)
            .count()
    }

    fn allowed(&self) -> usize {
        (self.active() * self.config.percent as usize / 100).max(1)
    }

    fn panic(&self) -> bool {
        let active = self.active();
        let ejected = self.book.len();
        ejected > 0
            && ((active - ejected.min(active)) as f64)
                < f64::from(self.config.panic) / 100.0 * active as f64
    }

    fn new_epoch(&mut self, instance: usize) {
        let i = &mut self.instances[instance];
        i.epoch += 1;
        i.streak = 0;
    }

    fn readmit(&mut self, instance: usize, now: u64) {
        // Back at its time (or now, if the set shrank first).
        let until = self.instances[instance].until.unwrap_or(now);
        self.instances[instance].until = None;
        self.instances[instance].returned = until.min(now).max(1);
        self.new_epoch(instance);
    }

    /// What a pick does first: end the ejections whose time is up.
    fn before_pick(&mut self, now: u64) {
        if self.book.iter().any(|&(_, until)| until <= now) {
            let expired: Vec<usize> = self
                .book
                .iter()
                .filter(|&&(_, until)| until <= now)
                .map(|&(i, _)| i)
                .collect();
            self.book.retain(|&(_, until)| until > now);
            for i in expired {
                self.readmit(i, now);
            }
        }
    }

    /// What the sweeper does when time moves: ends the ejections whose
    /// time is up, then runs the interval sweeps due since the last, as
    /// one: every active endpoint in rotation, back for an interval or more
    /// at a sweep, has its multiplier brought down by one for that sweep.
    fn sweep(&mut self, now: u64) {
        self.before_pick(now);
        if now < self.next_sweep {
            return;
        }
        let interval = self.config.interval_ms;
        let due = self.next_sweep;
        let sweeps: Vec<u64> = (0..)
            .map(|j| due + j * interval)
            .take_while(|&at| at <= now)
            .collect();
        self.next_sweep = due + sweeps.len() as u64 * interval;
        let members: Vec<(usize, u32)> = self.members.iter().flatten().copied().collect();
        for (instance, weight) in members {
            let i = &mut self.instances[instance];
            if weight == 0 || i.retired || i.until.is_some() || i.returned == 0 {
                continue;
            }
            let down = sweeps
                .iter()
                .filter(|&&at| at >= i.returned + interval)
                .count();
            i.times = i.times.saturating_sub(down as u32);
        }
    }

    fn outcome(&mut self, instance: usize, sent_in: u64, failed: bool, now: u64) {
        if self.instances[instance].epoch != sent_in {
            return;
        }
        if !failed {
            self.instances[instance].streak = 0;
            return;
        }
        self.instances[instance].streak += 1;
        let i = &self.instances[instance];
        if i.streak < self.config.threshold || i.until.is_some() || i.retired {
            return;
        }
        if self.book.len() >= self.allowed() {
            self.instances[instance].streak = 0;
            return;
        }
        let config = self.config.clone();
        let i = &mut self.instances[instance];
        if config.base_ms * u64::from(i.times) < config.max_ms {
            i.times += 1;
        }
        let duration = (config.base_ms * u64::from(i.times)).min(config.max_ms);
        let until = now + duration.max(1);
        i.until = Some(until);
        self.new_epoch(instance);
        self.book.push((instance, until));
    }

    /// After any change of the set: drained and removed endpoints retire,
    /// drained ones that got a weight again rejoin, and the ejections are
    /// cut down to what the new set allows (those ending soonest end).
    fn after_update(&mut self, removed: Option<usize>, now: u64) {
        if let Some(instance) = removed {
            self.retire(instance);
        }
        let members: Vec<(usize, u32)> = self.members.iter().flatten().copied().collect();
        for (instance, weight) in members {
            if weight == 0 {
                self.retire(instance);
            } else if self.instances[instance].retired {
                self.instances[instance].retired = false;
                self.new_epoch(instance);
            }
        }
        let allowed = self.allowed();
        if self.book.len() > allowed {
            self.book.sort_by_key(|&(_, until)| until);
            let extra = self.book.len() - allowed;
            let ending: Vec<usize> = self.book.drain(..extra).map(|(i, _)| i).collect();
            for i in ending {
                self.readmit(i, now);
            }
        }
    }

    fn retire(&mut self, instance: usize) {
        if self.instances[instance].retired {
            return;
        }
        self.instances[instance].retired = true;
        self.instances[instance].until = None;
        self.new_epoch(instance);
        self.book.retain(|&(i, _)| i != instance);
    }
}

fn run(config: Config, initial: Vec<u32>, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let detection = OutlierDetection::default()
        .consecutive_failures(config.threshold)
        .max_ejection_percent(config.percent)
        .panic_threshold(config.panic)
        .base_ejection_time(Duration::from_millis(config.base_ms))
        .max_ejection_time(Duration::from_millis(config.max_ms))
        .interval(Duration::from_millis(config.interval_ms));
    let policy: Policy = match config.policy {
        0 => Policy::round_robin(),
        1 => Policy::weighted_round_robin(),
        2 => Policy::random(),
        _ => Policy::least_response_time().into(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let start = Instant::now();
        let balancer = initial
            .iter()
            .enumerate()
            .fold(Balancer::builder(), |b, (i, &w)| {
                b.endpoint_weighted(url(i), w)
            })
            .policy(policy)
            .outlier_detection(detection)
            .retry(Retries::disabled())
            .seed(1)
            .build()
            .unwrap();
        let mut model = Model {
            next_sweep: config.interval_ms,
            config,
            instances: Vec::new(),
            members: vec![None; POOL],
            book: Vec::new(),
        };
        for (i, &w) in initial.iter().enumerate() {
            model.instances.push(Instance::default());
            model.members[i] = Some((model.instances.len() - 1, w));
        }
        model.after_update(None, 0);
        // Requests in flight: the selection, its endpoint's instance, and
        // the epoch it was sent in.
        let mut held: Vec<(Selection, usize, u64)> = Vec::new();
        let now = || Instant::now().duration_since(start).as_millis() as u64;

        for step in steps {
            match step {
                Step::Send { fail, hold } => {
                    let stats = balancer.stats();
                    let selected = balancer.select(&http::Request::get("/").body(()).unwrap());
                    model.before_pick(now());
                    let Ok(selection) = selected else {
                        // Only with no active endpoint, or every one ejected
                        // (100% may be) and panic mode off.
                        let all_out = model.book.len() >= model.active() && !model.panic();
                        prop_assert!(
                            model.active() == 0 || all_out,
                            "no endpoint available, but some take requests"
                        );
                        continue;
                    };
                    let chosen = selection.endpoint().to_owned();
                    let index = (0..POOL).find(|&i| url(i) == chosen).unwrap();
                    let (instance, _) = model.members[index].unwrap();
                    let seen = stats.endpoint(&chosen).unwrap();
                    prop_assert!(
                        !seen.ejected || model.panic(),
                        "an ejected endpoint got a request outside panic mode: {chosen}"
                    );
                    let sent_in = model.instances[instance].epoch;
                    if hold {
                        held.push((selection, instance, sent_in));
                    } else {
                        selection.finish(status(fail));
                        model.outcome(instance, sent_in, fail, now());
                    }
                }
                Step::Finish { index, fail } => {
                    if held.is_empty() {
                        continue;
                    }
                    let (selection, instance, sent_in) = held.swap_remove(index % held.len());
                    selection.finish(status(fail));
                    model.outcome(instance, sent_in, fail, now());
                }
                Step::Cancel { index } => {
                    if !held.is_empty() {
                        drop(held.swap_remove(index % held.len()));
                    }
                }
                Step::Advance { ms } => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    // The sweeper, woken by its timer, runs now.
                    tokio::task::yield_now().await;
                    model.sweep(now());
                }
                Step::Add { endpoint, weight } => {
                    let added = balancer.add(url(endpoint), weight);
                    prop_assert_eq!(added.is_ok(), model.members[endpoint].is_none());
                    if added.is_ok() {
                        model.instances.push(Instance::default());
                        model.members[endpoint] = Some((model.instances.len() - 1, weight));
                        model.after_update(None, now());
                    }
                }
                Step::Remove { endpoint } => {
                    let removed = balancer.remove(url(endpoint));
                    prop_assert_eq!(removed.is_ok(), model.members[endpoint].is_some());
                    if let Some((instance, _)) = model.members[endpoint].take() {
                        model.after_update(Some(instance), now());
                    }
                }
                Step::SetWeight { endpoint, weight } => {
                    let set = balancer.set_weight(url(endpoint), weight);
                    prop_assert_eq!(set.is_ok(), model.members[endpoint].is_some());
                    if let Some((instance, _)) = model.members[endpoint] {
                        model.members[endpoint] = Some((instance, weight));
                        model.after_update(None, now());
                    }
                }
            }
            check(&balancer, &model, now())?;
        }
        drop(held);
        prop_assert_eq!(balancer.stats().in_flight(), 0);
        Ok(())
    })
}

fn status(fail: bool) -> http::StatusCode {
    if fail {
        http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        http::StatusCode::OK
    }
}

/// The balancer agrees with the model (so every ejection ends when the
/// model's does, in panic mode too, and returns need fresh failures), and
/// the documented invariants hold.
fn check(balancer: &Balancer, model: &Model, now: u64) -> Result<(), TestCaseError> {
    let stats = balancer.stats();
    let mut ejected_active = 0;
    for (i, member) in model.members.iter().enumerate() {
        let Some((instance, weight)) = *member else {
            prop_assert!(
                stats.endpoint(url(i)).is_none(),
                "a removed endpoint is still listed"
            );
            continue;
        };
        let seen = stats.endpoint(url(i)).expect("listed");
        let expected = &model.instances[instance];
        let ejected = expected.until.is_some_and(|until| now < until);
        prop_assert_eq!(
            seen.ejected,
            ejected,
            "ejected, endpoint {} at {} ms: {:?}",
            i,
            now,
            expected
        );
        prop_assert_eq!(
            seen.times_ejected,
            expected.times,
            "times ejected, endpoint {}",
            i
        );
        // A drained endpoint holds nothing.
        if weight == 0 {
            prop_assert!(!seen.ejected, "a drained endpoint holds an ejection");
        } else if seen.ejected {
            ejected_active += 1;
        }
    }
    // Never more ejected than the current set allows.
    prop_assert!(
        ejected_active <= model.allowed(),
        "{ejected_active} ejected, {} allowed",
        model.allowed()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Outlier detection matches the model, and: the number of ejected
    /// endpoints never exceeds the allowed share of the current set; a
    /// removed or drained endpoint holds nothing; an ejected endpoint gets
    /// no request outside panic mode; every ejection ends within its time,
    /// in panic mode too; an endpoint back from ejection needs the full
    /// threshold of fresh failures.
    #[test]
    fn outlier_detection_keeps_its_promises_over_random_outcomes_and_membership_changes(
        config in config(),
        initial in prop::collection::vec(0u32..4, 1..POOL),
        steps in prop::collection::vec(step(), 1..250),
    ) {
        let mut initial = initial;
        if initial.iter().all(|&w| w == 0) {
            initial[0] = 1;
        }
        run(config, initial, steps)?;
    }
}
