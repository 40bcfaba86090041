//! Tokens per minute: a bucket refilled continuously at `limit / 60 s`, from which a request
//! reserves its worst case (prompt + max_tokens) and to which it returns what it did not use.
//! governor cannot return cells, hence this small bucket of our own.

use std::sync::Mutex;
use std::time::Duration;

use super::clock::LimitClock;

#[derive(Debug)]
pub struct TokenBucket {
    limit: u64,
    clock: LimitClock,
    state: Mutex<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Duration,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shortfall {
    /// Enough tokens will be back after this long.
    Wait(Duration),
    /// The request needs more than the whole limit; it can never be admitted.
    TooLarge,
}

impl TokenBucket {
    pub fn new(limit_per_minute: u64, clock: LimitClock) -> Self {
        let at = clock.elapsed();
        Self {
            limit: limit_per_minute,
            clock,
            state: Mutex::new(Level {
                tokens: limit_per_minute as f64,
                at,
            }),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn per_second(&self) -> f64 {
        self.limit as f64 / 60.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Level> {
        // A panic while holding this lock cannot leave the level inconsistent (plain floats).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The level now, refilled for the time since it was last read.
    fn refill(&self, level: &mut Level) {
        let now = self.clock.elapsed();
        let dt = now.saturating_sub(level.at).as_secs_f64();
        level.tokens = (level.tokens + dt * self.per_second()).min(self.limit as f64);
        level.at = now;
    }

    /// Takes `n` tokens if they are there now.
    pub fn take(&self, n: u64) -> Result<(), Shortfall> {
        if n > self.limit {
            return Err(Shortfall::TooLarge);
        }
        let mut level = self.lock();
        self.refill(&mut level);
        let missing = n as f64 - level.tokens;
        if missing > 0.0 {
            return Err(Shortfall::Wait(Duration::from_secs_f64(
                missing / self.per_second(),
            )));
        }
        level.tokens -= n as f64;
        Ok(())
    }

    /// Returns tokens a request reserved but did not use.
    pub fn give_back(&self, n: u64) {
        let mut level = self.lock();
        self.refill(&mut level);
        level.tokens = (level.tokens + n as f64).min(self.limit as f64);
    }

    /// Charges `n` tokens used beyond a reservation, whether or not they are there: the
    /// bucket may go into debt (at most one minute's worth), delaying the next request.
    pub fn charge(&self, n: u64) {
        let mut level = self.lock();
        self.refill(&mut level);
        level.tokens = (level.tokens - n as f64).max(-(self.limit as f64));
    }

    /// Whole tokens available now, and the time until the bucket is full again.
    pub fn remaining(&self) -> (u64, Duration) {
        let mut level = self.lock();
        self.refill(&mut level);
        let tokens = level.tokens.max(0.0);
        let reset = (self.limit as f64 - tokens) / self.per_second();
        (
            tokens.floor() as u64,
            Duration::from_secs_f64(reset.max(0.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_refills_and_gives_back() {
        let clock = LimitClock::manual();
        let b = TokenBucket::new(600, clock.clone());
        assert_eq!(b.remaining(), (600, Duration::ZERO));
        b.take(500).unwrap();
        assert_eq!(b.remaining().0, 100);
        assert_eq!(b.take(200), Err(Shortfall::Wait(Duration::from_secs(10))));
        clock.advance(Duration::from_secs(10)); // 10 tokens per second
        assert_eq!(b.remaining().0, 200);
        b.give_back(300);
        assert_eq!(b.remaining().0, 500);
        b.give_back(1000);
        assert_eq!(b.remaining(), (600, Duration::ZERO));
        assert_eq!(b.take(601), Err(Shortfall::TooLarge));
    }

    #[test]
    fn usage_beyond_the_reservation_is_debt() {
        let clock = LimitClock::manual();
        let b = TokenBucket::new(600, clock.clone());
        b.take(600).unwrap();
        b.charge(300);
        assert_eq!(b.remaining().0, 0);
        // 300 owed: 40 s until a 100-token request fits (10 tokens a second).
        assert_eq!(b.take(100), Err(Shortfall::Wait(Duration::from_secs(40))));
        // Debt is capped at one minute's worth.
        b.charge(u64::MAX);
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.remaining().0, 0);
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.remaining().0, 600);
    }
}
