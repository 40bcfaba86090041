//! The time source of rate limits: the monotonic clock in production, a manual one in tests
//! (so "a burst of N admits exactly L" is checked without sleeping).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::nanos::Nanos;

#[derive(Debug, Clone)]
pub enum LimitClock {
    /// Time since the process made the clock.
    Monotonic(Instant),
    /// Time set by hand, in nanoseconds.
    Manual(Arc<AtomicU64>),
}

impl LimitClock {
    pub fn monotonic() -> Self {
        Self::Monotonic(Instant::now())
    }

    pub fn manual() -> Self {
        Self::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// Moves a manual clock forward; does nothing to the monotonic one.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(now) = self {
            now.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Time since the clock's start.
    pub fn elapsed(&self) -> Duration {
        match self {
            Self::Monotonic(start) => start.elapsed(),
            Self::Manual(now) => Duration::from_nanos(now.load(Ordering::Relaxed)),
        }
    }
}

impl governor::clock::Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}
