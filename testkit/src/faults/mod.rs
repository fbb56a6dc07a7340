//! Faults on purpose, around any transport and any store: duplicated, delayed and reordered
//! deliveries, deliveries dropped before they were handled, acknowledgements lost after they
//! were, publishes and store commits that fail (one at a time, or for a while), slow commits
//! and slow handlers. Every choice comes from one seed, printed when a test panics, so a
//! failure can be replayed.
//!
//! ```no_run
//! # async fn example(
//! #     transport: std::sync::Arc<dyn choreo_core::Transport>,
//! #     store: std::sync::Arc<dyn choreo_core::Store>,
//! # ) {
//! use std::time::Duration;
//! use choreo_testkit::faults::Faults;
//!
//! let faults = Faults::from_env()
//!     .duplicate(0.05)
//!     .delay(0.05, Duration::from_millis(200))
//!     .lose_ack(0.02)
//!     .fail_publish(0.02)
//!     .fail_commit(0.02)
//!     .into_shared();
//! let transport = faults.transport(transport);
//! let store = faults.store(store);
//! // ... run the services on them; `faults.transport_outage(Duration::from_secs(1))` takes
//! // the broker away for a second, `faults.counts()` says what was injected.
//! # }
//! ```
//!
//! The seed fixes the sequence of choices; which delivery meets which choice still depends
//! on how the tasks interleave, so a replay is faithful on a single-threaded runtime with
//! paused time, and close to it elsewhere.

mod rng;
mod store;
#[cfg(test)]
mod tests;
mod transport;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_core::{Store, Transport};
use tokio::time::Instant;

use self::rng::Rng;
pub use self::store::FaultyStore;
pub use self::transport::FaultyTransport;

/// The environment variable [`Faults::from_env`] reads its seed from.
pub const SEED_VARIABLE: &str = "CHOREO_FAULT_SEED";

/// Which faults to inject and how often: each rate is the probability (0 to 1) that one
/// delivery, publish, commit or handler meets the fault.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FaultRates {
    /// A delivery is delivered once more, later (up to `max_delay`), as a broker does after a
    /// consumer's acknowledgement was lost on the way.
    pub duplicate: f64,
    /// A delivery is held back for up to `max_delay` while later ones go ahead.
    pub delay: f64,
    /// How long a delayed delivery or a duplicate waits at most.
    pub max_delay: Duration,
    /// A delivery is dropped unsettled before the consumer sees it, as when a consumer dies
    /// before handling it: the broker delivers it again.
    pub drop_unacked: f64,
    /// A delivery's acknowledgement is lost after it was handled: the broker delivers it
    /// again.
    pub lose_ack: f64,
    /// A publish fails, as when the broker is briefly unreachable.
    pub fail_publish: f64,
    /// A store commit fails before anything of it is applied.
    pub fail_commit: f64,
    /// A store commit takes up to `max_slow` longer.
    pub slow_commit: f64,
    /// A handler that calls [`Faults::slow_handler`] takes up to `max_slow` longer.
    pub slow_handler: f64,
    /// How much longer a slow commit or handler takes at most.
    pub max_slow: Duration,
    /// The store forgets which events were handled: a broken inbox, for showing that a
    /// test catches the double effects it causes. Not a fault a working system survives.
    pub forget_handled: bool,
}

impl FaultRates {
    /// Whether no fault is injected at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How many faults of each kind were injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Deliveries delivered once more.
    pub duplicated: u64,
    /// Deliveries held back.
    pub delayed: u64,
    /// Deliveries dropped unsettled.
    pub dropped: u64,
    /// Acknowledgements lost.
    pub lost_acks: u64,
    /// Publishes failed, outages included.
    pub failed_publishes: u64,
    /// Store calls failed (commits, and every call during an outage).
    pub failed_store_calls: u64,
    /// Commits and handlers slowed.
    pub slowed: u64,
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} duplicated, {} delayed, {} dropped unacked, {} acks lost, {} publishes failed, \
             {} store calls failed, {} slowed",
            self.duplicated,
            self.delayed,
            self.dropped,
            self.lost_acks,
            self.failed_publishes,
            self.failed_store_calls,
            self.slowed
        )
    }
}

/// A seeded source of faults, shared by the transports and stores it wraps.
pub struct Faults {
    seed: u64,
    rates: FaultRates,
    rng: Mutex<Rng>,
    counters: Counters,
    transport_down_until: Mutex<Option<Instant>>,
    store_down_until: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Counters {
    duplicated: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    lost_acks: AtomicU64,
    failed_publishes: AtomicU64,
    failed_store_calls: AtomicU64,
    slowed: AtomicU64,
}

impl Faults {
    /// No faults yet, choices made from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            rates: FaultRates::default(),
            rng: Mutex::new(Rng::new(seed)),
            counters: Counters::default(),
            transport_down_until: Mutex::new(None),
            store_down_until: Mutex::new(None),
        }
    }

    /// Seeded from [`SEED_VARIABLE`] if it is set to a number, from the clock otherwise.
    pub fn from_env() -> Self {
        let seed = std::env::var(SEED_VARIABLE)
            .ok()
            .and_then(|seed| seed.trim().parse().ok())
            .unwrap_or_else(clock_seed);
        Self::seeded(seed)
    }

    /// The seed: set [`SEED_VARIABLE`] to it to make the same choices again.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The rates in force.
    pub fn rates(&self) -> &FaultRates {
        &self.rates
    }

    /// Every rate at once.
    pub fn with_rates(mut self, rates: FaultRates) -> Self {
        self.rates = rates;
        self
    }

    /// Delivers a `rate` of deliveries twice.
    pub fn duplicate(mut self, rate: f64) -> Self {
        self.rates.duplicate = rate;
        self
    }

    /// Holds a `rate` of deliveries back for up to `max_delay` (duplicates wait as long).
    pub fn delay(mut self, rate: f64, max_delay: Duration) -> Self {
        self.rates.delay = rate;
        self.rates.max_delay = max_delay;
        self
    }

    /// Drops a `rate` of deliveries unsettled before they are handled.
    pub fn drop_unacked(mut self, rate: f64) -> Self {
        self.rates.drop_unacked = rate;
        self
    }

    /// Loses the acknowledgement of a `rate` of handled deliveries.
    pub fn lose_ack(mut self, rate: f64) -> Self {
        self.rates.lose_ack = rate;
        self
    }

    /// Fails a `rate` of publishes.
    pub fn fail_publish(mut self, rate: f64) -> Self {
        self.rates.fail_publish = rate;
        self
    }

    /// Fails a `rate` of store commits.
    pub fn fail_commit(mut self, rate: f64) -> Self {
        self.rates.fail_commit = rate;
        self
    }

    /// Slows a `rate` of store commits, and of handlers that call
    /// [`slow_handler`](Self::slow_handler), by up to `max_slow`.
    pub fn slow(mut self, rate: f64, max_slow: Duration) -> Self {
        self.rates.slow_commit = rate;
        self.rates.slow_handler = rate;
        self.rates.max_slow = max_slow;
        self
    }

    /// Makes the stores forget which events were handled ([`FaultRates::forget_handled`]).
    pub fn forget_handled(mut self, forget: bool) -> Self {
        self.rates.forget_handled = forget;
        self
    }

    /// Shared, to wrap transports and stores.
    pub fn into_shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    /// `transport` with these faults.
    pub fn transport(self: &Arc<Self>, transport: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(FaultyTransport::new(transport, Arc::clone(self)))
    }

    /// `store` with these faults.
    pub fn store(self: &Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(FaultyStore::new(store, Arc::clone(self)))
    }

    /// Every publish through the wrapped transports fails for `duration` from now.
    pub fn transport_outage(&self, duration: Duration) {
        down_for(&self.transport_down_until, duration);
    }

    /// Every call to the wrapped stores fails for `duration` from now.
    pub fn store_outage(&self, duration: Duration) {
        down_for(&self.store_down_until, duration);
    }

    /// Waits a random while, up to the rates' `max_slow`, for a `slow_handler` rate of
    /// calls: for handlers to call first thing.
    pub async fn slow_handler(&self) {
        let rate = self.rates.slow_handler;
        if let Some(pause) = self.pause(rate) {
            tokio::time::sleep(pause).await;
        }
    }

    /// How many faults of each kind were injected so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.counters;
        FaultCounts {
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            lost_acks: c.lost_acks.load(Ordering::Relaxed),
            failed_publishes: c.failed_publishes.load(Ordering::Relaxed),
            failed_store_calls: c.failed_store_calls.load(Ordering::Relaxed),
            slowed: c.slowed.load(Ordering::Relaxed),
        }
    }

    /// A number below `bound`, from the seed: for a test's own choices (which service to
    /// kill, and when), so the seed reproduces them too.
    pub fn choose(&self, bound: usize) -> usize {
        (self.rng().unit() * bound as f64) as usize % bound.max(1)
    }

    /// A duration up to `max`, from the seed.
    pub fn up_to(&self, max: Duration) -> Duration {
        max.mul_f64(self.rng().unit())
    }

    /// Whether the next choice at `rate` meets the fault.
    fn hit(&self, rate: f64) -> bool {
        rate > 0.0 && self.rng().unit() < rate
    }

    /// A slowdown, for a `rate` of calls.
    fn pause(&self, rate: f64) -> Option<Duration> {
        if !self.hit(rate) {
            return None;
        }
        self.counters.slowed.fetch_add(1, Ordering::Relaxed);
        Some(self.up_to(self.rates.max_slow))
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, Rng> {
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn transport_down(&self) -> bool {
        is_down(&self.transport_down_until)
    }

    fn store_down(&self) -> bool {
        is_down(&self.store_down_until)
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "faults were injected with seed {seed}: {SEED_VARIABLE}={seed} makes the same choices",
                seed = self.seed
            );
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("seed", &self.seed)
            .field("rates", &self.rates)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

fn down_for(until: &Mutex<Option<Instant>>, duration: Duration) {
    let end = Instant::now() + duration;
    let mut until = until
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *until = Some(until.map_or(end, |current| current.max(end)));
}

fn is_down(until: &Mutex<Option<Instant>>) -> bool {
    let until = until
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    until.is_some_and(|until| Instant::now() < until)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}
