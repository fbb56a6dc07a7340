//! Deterministic misbehaviour for tests: duplicated and reordered deliveries.

use std::time::Duration;

/// What the in-memory broker does wrong on purpose, reproducibly from `seed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Chaos {
    /// Seed of the pseudo-random choices.
    pub seed: u64,
    /// Percent of published messages delivered twice to a group.
    pub duplicate_percent: u8,
    /// Deliver any pending message next, not the oldest, ignoring per-saga order.
    pub reorder: bool,
    /// Each message reaches each group after a random delay up to this (in tokio time), so
    /// messages overtake each other in flight.
    pub max_delay: Duration,
}

impl Chaos {
    /// No misbehaviour yet, from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// Duplicates `percent` of messages.
    pub fn duplicate_percent(mut self, percent: u8) -> Self {
        self.duplicate_percent = percent.min(100);
        self
    }

    /// Delivers pending messages in random order.
    pub fn reorder(mut self, reorder: bool) -> Self {
        self.reorder = reorder;
        self
    }

    /// Delays each message by up to `delay`.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }
}

/// splitmix64: small, fast and good enough to shuffle test deliveries.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn below(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % bound.max(1) as u64) as usize
    }

    pub(crate) fn percent(&mut self, percent: u8) -> bool {
        self.below(100) < usize::from(percent)
    }
}
