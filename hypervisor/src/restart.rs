//! When a driver domain that crashed is restarted, and when it is left stopped: a crash (a
//! fatal fault, a panic, a reset) restarts it at once the first time, then with a growing
//! back-off, and after [`MAX_CRASHES`] crashes within [`WINDOW_MS`] it stays stopped, so a
//! driver that cannot start cannot keep a pCPU busy rebooting forever. Guests are told their
//! back-end went away either way (the control page's closed section and stop word).

/// Crashes within [`WINDOW_MS`] after which a driver domain is left stopped.
pub const MAX_CRASHES: usize = 5;
/// The window crashes are counted in.
pub const WINDOW_MS: u64 = 60_000;
/// The back-off before the second restart within the window; it doubles for each further one.
pub const FIRST_BACKOFF_MS: u64 = 100;

/// What to do about a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Restart it, starting its first vCPU after `delay_ms`; `crash` counts this one within
    /// the window (1 = the first).
    Restart { delay_ms: u64, crash: usize },
    /// Leave it stopped: `crashes` within the window.
    GiveUp { crashes: usize },
}

/// The recent crashes of one VM (times in ms since boot).
#[derive(Clone, Debug, Default)]
pub struct CrashHistory {
    recent: [u64; MAX_CRASHES],
    count: usize,
}

impl CrashHistory {
    /// A crash at `now_ms`: remembered, and the verdict.
    pub fn crashed(&mut self, now_ms: u64) -> Verdict {
        // Forget crashes older than the window (the array is in time order).
        let keep_from = self.recent[..self.count]
            .iter()
            .position(|&t| now_ms.saturating_sub(t) < WINDOW_MS)
            .unwrap_or(self.count);
        self.recent.copy_within(keep_from..self.count, 0);
        self.count -= keep_from;
        if self.count + 1 >= MAX_CRASHES {
            return Verdict::GiveUp {
                crashes: self.count + 1,
            };
        }
        self.recent[self.count] = now_ms;
        self.count += 1;
        let delay_ms = match self.count {
            1 => 0,
            n => FIRST_BACKOFF_MS << (n - 2),
        };
        Verdict::Restart {
            delay_ms,
            crash: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_then_give_up_within_the_window() {
        let mut h = CrashHistory::default();
        let verdicts: Vec<Verdict> = (0..6).map(|i| h.crashed(1_000 + i * 100)).collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::Restart {
                    delay_ms: 0,
                    crash: 1
                },
                Verdict::Restart {
                    delay_ms: 100,
                    crash: 2
                },
                Verdict::Restart {
                    delay_ms: 200,
                    crash: 3
                },
                Verdict::Restart {
                    delay_ms: 400,
                    crash: 4
                },
                Verdict::GiveUp { crashes: 5 },
                Verdict::GiveUp { crashes: 5 },
            ]
        );
    }

    #[test]
    fn crashes_far_apart_always_restart_at_once() {
        let mut h = CrashHistory::default();
        for i in 0..20 {
            assert_eq!(
                h.crashed(i * (WINDOW_MS + 1)),
                Verdict::Restart {
                    delay_ms: 0,
                    crash: 1
                }
            );
        }
        // Two close together after a long quiet spell: the second backs off.
        let t = 100 * WINDOW_MS;
        h.crashed(t);
        assert_eq!(
            h.crashed(t + 10),
            Verdict::Restart {
                delay_ms: FIRST_BACKOFF_MS,
                crash: 2
            }
        );
        // A clock that goes backwards (it does not, but) neither panics nor forgets.
        assert!(matches!(h.crashed(0), Verdict::Restart { crash: 3, .. }));
    }
}
