//! Rate budgets for what a guest can make the driver domain do: a token bucket on the caller's
//! millisecond clock. The switch gives each port one for floods (broadcast, multicast and
//! unknown unicast), the back-end each connection one for connection attempts. And the event
//! window: how many events a guest's port may send it per window, with an event held back by
//! the budget owed, not dropped.

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

/// Events per window for one guest, on the caller's clock (counter ticks). A guest that asks
/// for an event on every completion cannot make us send more than `limit` a window; an event
/// the budget holds back is owed and goes at the start of the next window ([`Self::owed_at`]),
/// so a guest that sleeps waiting for it is woken late, never left asleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWindow {
    limit: u32,
    window_ticks: u64,
    started: u64,
    sent: u32,
    owed: bool,
}

impl EventWindow {
    /// A fresh window starting at `now` allowing `limit` events every `window_ticks`.
    pub const fn new(limit: u32, window_ticks: u64, now: u64) -> EventWindow {
        EventWindow {
            limit,
            window_ticks,
            started: now,
            sent: 0,
            owed: false,
        }
    }

    /// Whether an event may be sent at `now` (and counts it); if not, the event is owed.
    pub fn try_send(&mut self, now: u64) -> bool {
        if now.saturating_sub(self.started) >= self.window_ticks {
            self.started = now;
            self.sent = 0;
        }
        if self.sent >= self.limit {
            self.owed = true;
            return false;
        }
        self.sent += 1;
        self.owed = false;
        true
    }

    /// Whether an event was held back and not sent since.
    pub const fn owed(&self) -> bool {
        self.owed
    }

    /// When the owed event may go (the next window's start), if one is owed.
    pub const fn owed_at(&self) -> Option<u64> {
        if self.owed {
            Some(self.started.saturating_add(self.window_ticks))
        } else {
            None
        }
    }
}

/// Where each round over the ports starts: one port later every round, so no port is always
/// served first. Served first, a port's frames reached their receivers first, which were woken
/// first and so ran first: with four pairs sharing two pCPUs, pair 1 got 1.5x pair 4 in every
/// bench run (issue 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// The order of this round over `ports` ports: every index below `ports` once, starting one
    /// further along than the last round did.
    pub fn round(&mut self, ports: usize) -> impl Iterator<Item = usize> {
        let first = if ports == 0 { 0 } else { self.next % ports };
        self.next = first + 1;
        (0..ports).map(move |k| (first + k) % ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_over_the_budget_is_owed_until_the_next_window() {
        let mut w = EventWindow::new(3, 1_000, 500);
        assert!((0..3).all(|i| w.try_send(500 + i)));
        assert_eq!(w.owed_at(), None);
        assert!(!w.try_send(600));
        assert!(w.owed());
        assert_eq!(w.owed_at(), Some(1_500));
        // Still the same window: still owed.
        assert!(!w.try_send(1_499));
        assert_eq!(w.owed_at(), Some(1_500));
        // The next window pays it.
        assert!(w.try_send(1_500));
        assert!(!w.owed());
        assert_eq!(w.owed_at(), None);
    }

    #[test]
    fn a_steady_hammer_gets_the_limit_per_window() {
        let mut w = EventWindow::new(20, 1_000, 0);
        let sent = (0..10_000u64).filter(|&t| w.try_send(t)).count();
        assert_eq!(sent, 20 * 10);
        let mut none = EventWindow::new(0, 1_000, 0);
        assert!(!none.try_send(5));
        assert_eq!(none.owed_at(), Some(1_000));
    }

    #[test]
    fn a_clock_that_stands_still_or_goes_back_opens_no_window() {
        let mut w = EventWindow::new(1, 1_000, 10_000);
        assert!(w.try_send(10_000));
        assert!(!w.try_send(9_000));
        assert!(!w.try_send(10_000));
        assert_eq!(w.owed_at(), Some(11_000));
        // Nor does the end of time overflow.
        assert!(w.try_send(u64::MAX));
        assert!(!w.try_send(u64::MAX));
        assert_eq!(w.owed_at(), Some(u64::MAX));
    }

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

    #[test]
    fn every_round_visits_each_port_once_and_each_port_leads_in_turn() {
        for ports in 0..9 {
            let mut rr = RoundRobin::default();
            let mut leaders = Vec::new();
            for _ in 0..3 * ports {
                let order: Vec<usize> = rr.round(ports).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..ports).collect::<Vec<_>>(), "{ports} ports");
                leaders.push(order[0]);
            }
            // Each port first once in every `ports` rounds, in turn.
            let expected: Vec<usize> = (0..3 * ports).map(|r| r % ports).collect();
            assert_eq!(leaders, expected, "{ports} ports");
        }
    }

    #[test]
    fn a_port_that_leaves_does_not_stop_the_rotation() {
        let mut rr = RoundRobin::default();
        let _ = rr.round(4).count();
        let _ = rr.round(4).count();
        let _ = rr.round(4).count();
        // Down to two ports (the one that led next is gone): still in range, still turning.
        let firsts: Vec<usize> = (0..4).map(|_| rr.round(2).next().unwrap()).collect();
        assert_eq!(firsts, [1, 0, 1, 0]);
        assert_eq!(rr.round(0).count(), 0);
        assert_eq!(rr.round(1).collect::<Vec<_>>(), [0]);
    }
}
