//! Which sagas the file may hold a row of, as a Bloom filter of (service, saga) keys.
//!
//! Every saga a service meets for the first time is looked up first, and is not there: the
//! filter answers those without reading the file. It holds every key the file held when the
//! store opened and every key the store wrote since, so "absent" is certain; "present" may be
//! wrong (the file is read then, as it would be without the filter). Keys are not removed when
//! the purge deletes their rows, so a store that writes many times the filter's size before
//! it opens again reads the file more often: never less correctly.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use choreo_core::SagaId;

/// Bits set per key.
const HASHES: u64 = 3;
/// The smallest filter: 2 MiB, under 1% false positives up to 2 million keys.
const MIN_BITS: u64 = 1 << 24;
/// Bits per key the file already holds at open.
const BITS_PER_KEY: u64 = 16;

pub(crate) struct Known {
    words: Vec<AtomicU64>,
    /// The number of bits, less one: a power of two.
    mask: u64,
}

impl Known {
    /// An empty filter sized for a file holding `keys` keys.
    pub(crate) fn sized_for(keys: u64) -> Self {
        let bits = keys
            .saturating_mul(BITS_PER_KEY)
            .max(MIN_BITS)
            .next_power_of_two();
        Self {
            words: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            mask: bits - 1,
        }
    }

    /// Notes that the file may hold a row of `saga` for `service`.
    pub(crate) fn insert(&self, service: &str, saga: SagaId) {
        for bit in self.bits(service, saga) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// Whether the file may hold a row of `saga` for `service`; `false` is certain.
    pub(crate) fn may_hold(&self, service: &str, saga: SagaId) -> bool {
        self.bits(service, saga).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }

    fn bits(&self, service: &str, saga: SagaId) -> impl Iterator<Item = u64> + '_ {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        service.hash(&mut hasher);
        let (high, low) = saga.as_uuid().as_u64_pair();
        let first = mix(low ^ hasher.finish());
        let second = mix(high ^ first) | 1;
        (0..HASHES).map(move |n| first.wrapping_add(n.wrapping_mul(second)) & self.mask)
    }
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inserted_are_held_and_few_others_seem_to_be() {
        let known = Known::sized_for(0);
        let sagas: Vec<SagaId> = (0..10_000).map(|_| SagaId::new()).collect();
        for saga in &sagas {
            known.insert("payments", *saga);
        }
        assert!(sagas.iter().all(|saga| known.may_hold("payments", *saga)));
        let strangers = (0..10_000)
            .filter(|_| known.may_hold("payments", SagaId::new()))
            .count();
        let other_service = sagas
            .iter()
            .filter(|saga| known.may_hold("orders", **saga))
            .count();
        assert!(strangers < 10, "{strangers} false positives in 10,000");
        assert!(
            other_service < 10,
            "{other_service} false positives in 10,000"
        );
    }

    #[test]
    fn a_file_with_many_keys_gets_a_larger_filter() {
        assert_eq!(Known::sized_for(0).mask + 1, MIN_BITS);
        assert_eq!(Known::sized_for(10_000_000).mask + 1, 1 << 28);
    }
}
