//! Where the runtime reads the time from.
//!
//! Deadlines travel between services as wall-clock instants, so the runtime needs wall-clock
//! time; tests need that time to follow paused tokio time. [`Clock`] is the seam.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock; the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall-clock time that advances with tokio's clock, so that paused tokio time
/// (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) moves deadlines too.
///
/// Clones share one anchor: give every service of one test the same clock.
#[derive(Clone)]
pub struct TokioClock {
    anchor: Arc<(SystemTime, tokio::time::Instant)>,
}

impl TokioClock {
    /// A clock that reads the system time once, now, and then advances with tokio time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that reads `start` now and then advances with tokio time.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            anchor: Arc::new((start, tokio::time::Instant::now())),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        let (wall, instant) = *self.anchor;
        wall + instant.elapsed()
    }
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock")
            .field("now", &self.now())
            .finish()
    }
}

/// How long from `now` until `then`; zero when `then` has passed.
pub(crate) fn until(now: SystemTime, then: SystemTime) -> Duration {
    then.duration_since(now).unwrap_or(Duration::ZERO)
}
