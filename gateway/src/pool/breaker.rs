//! A circuit breaker per replica: consecutive failures open it for a while; after that one
//! probe (a request or a health check) may pass, and its success closes it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    /// A half-open probe is out.
    probing: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn state(&self) -> BreakerState {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if self.now_ms() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// May a request go to this replica now? In the half-open state only one may, as the
    /// probe.
    pub fn allow(&self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => !self.probing.swap(true, Ordering::AcqRel),
        }
    }

    /// Gives back a half-open probe that proved nothing either way (the request was refused
    /// before or by the upstream for its own reasons), so the next request may probe.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if failures >= self.threshold || probe_failed {
            let until = self.now_ms() + self.open_for.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_a_probe_closes_it() {
        let b = Breaker::new(3, Duration::from_millis(50));
        b.failure();
        b.failure();
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(), "one probe passes");
        assert!(!b.allow(), "only one");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens it");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow() && b.allow());
    }

    #[test]
    fn a_probe_that_proved_nothing_is_given_back() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.failure();
        std::thread::sleep(Duration::from_millis(30));
        assert!(b.allow(), "the probe");
        assert!(!b.allow());
        b.release_probe();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(), "the next request may probe");
    }
}
