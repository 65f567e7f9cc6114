//! Rate budgets for what a guest can make the driver domain do: a token bucket on the caller's
//! millisecond clock. The switch gives each port one for floods (broadcast, multicast and
//! unknown unicast), the back-end each connection one for connection attempts.

/// A token bucket: up to `burst` tokens, one more every `period_ms`. Time is the caller's, in
/// milliseconds, so the same bucket runs in host tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    burst: u32,
    period_ms: u64,
    tokens: u32,
    /// When the next token is due (meaningful while `tokens < burst`).
    next_ms: u64,
}

impl TokenBucket {
    /// A full bucket. `period_ms` of 0 means no limit.
    pub const fn new(burst: u32, period_ms: u64) -> TokenBucket {
        TokenBucket {
            burst,
            period_ms,
            tokens: burst,
            next_ms: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if self.tokens >= self.burst {
            self.next_ms = now_ms.saturating_add(self.period_ms);
            return;
        }
        if now_ms < self.next_ms {
            return;
        }
        // Whole periods since the next token was due, plus that token; capped so a long idle
        // time cannot overflow anything.
        let periods = (now_ms - self.next_ms) / self.period_ms.max(1) + 1;
        let room = u64::from(self.burst - self.tokens);
        let add = periods.min(room);
        self.tokens += add as u32;
        self.next_ms = if self.tokens >= self.burst {
            now_ms.saturating_add(self.period_ms)
        } else {
            self.next_ms.saturating_add(add * self.period_ms)
        };
    }

    /// Takes a token at `now_ms`; `Err(ms)` (how long until one is due) when there is none.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        if self.period_ms == 0 {
            return Ok(());
        }
        self.refill(now_ms);
        if self.tokens == 0 {
            return Err(self.next_ms.saturating_sub(now_ms).max(1));
        }
        if self.tokens == self.burst {
            self.next_ms = now_ms.saturating_add(self.period_ms);
        }
        self.tokens -= 1;
        Ok(())
    }

    /// Tokens left at `now_ms`.
    pub fn available(&mut self, now_ms: u64) -> u32 {
        if self.period_ms == 0 {
            return u32::MAX;
        }
        self.refill(now_ms);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_token_per_period() {
        let mut b = TokenBucket::new(3, 100);
        for _ in 0..3 {
            assert_eq!(b.take(1_000), Ok(()));
        }
        assert_eq!(b.take(1_000), Err(100));
        assert_eq!(b.take(1_050), Err(50));
        assert_eq!(b.take(1_100), Ok(()));
        assert_eq!(b.take(1_100), Err(100));
        // Two periods later: two tokens, not more.
        assert_eq!(b.available(1_300), 2);
        // A long pause refills to the burst, never past it.
        assert_eq!(b.available(1_000_000), 3);
        for _ in 0..3 {
            assert_eq!(b.take(1_000_000), Ok(()));
        }
        assert!(b.take(1_000_000).is_err());
    }

    #[test]
    fn a_steady_hammer_gets_exactly_the_rate() {
        // One attempt per millisecond for 10 s against a 10-token, 1-per-20-ms bucket.
        let mut b = TokenBucket::new(10, 20);
        let granted = (0..10_000u64).filter(|&t| b.take(t).is_ok()).count();
        assert_eq!(granted, 10 + 10_000 / 20 - 1);
    }

    #[test]
    fn zero_period_is_unlimited_and_time_may_stand_still_or_jump() {
        let mut free = TokenBucket::new(0, 0);
        assert!((0..1000).all(|_| free.take(5).is_ok()));
        let mut b = TokenBucket::new(1, 10);
        assert_eq!(b.take(1_000), Ok(()));
        assert!(b.take(1_005).is_err());
        // A clock that goes backwards grants nothing extra.
        assert!(b.take(0).is_err());
        // Nor does one near the end of time overflow.
        assert_eq!(b.take(u64::MAX), Ok(()));
    }
}
