//! When a connected front-end's control section counts as scribbled over: only when it reads
//! invalid on two looks at least [`RECHECK_MS`] apart, with no valid read between.
//!
//! One look is not enough. The hypervisor rewrites a stopped front-end's section (to `Closed`)
//! while the driver domain may be copying the page on another CPU, and that copy can hold half
//! of the old section and half of the new: invalid, though neither side did anything wrong.
//! The rewrite takes microseconds and its event follows it, so a second look a few
//! milliseconds later sees the finished section. Time is the caller's, in milliseconds, so the
//! rule runs in host tests.

/// How long after an invalid read the section is read again.
pub const RECHECK_MS: u64 = 10;

/// The invalid reads of one connection's front-end section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondLook {
    invalid_since_ms: Option<u64>,
}

impl SecondLook {
    /// A valid read: any earlier invalid one was a torn copy, or the front-end repaired its
    /// section; either way nothing to hold against it.
    pub fn valid(&mut self) {
        self.invalid_since_ms = None;
    }

    /// An invalid read at `now_ms`. True when the section has now been invalid on two looks
    /// [`RECHECK_MS`] apart: the connection is to be closed (and the count starts again).
    pub fn invalid(&mut self, now_ms: u64) -> bool {
        match self.invalid_since_ms {
            Some(since) if now_ms >= since.saturating_add(RECHECK_MS) => {
                self.invalid_since_ms = None;
                true
            }
            Some(_) => false,
            None => {
                self.invalid_since_ms = Some(now_ms);
                false
            }
        }
    }

    /// When the second look is due (ms), if one is: the caller reads the section again then,
    /// event or not (a front-end that scribbles sends none it has to).
    pub fn due_at(&self) -> Option<u64> {
        self.invalid_since_ms
            .map(|since| since.saturating_add(RECHECK_MS))
    }

    /// When the first of the invalid looks now counted was made (ms).
    pub fn since(&self) -> Option<u64> {
        self.invalid_since_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_invalid_read_closes_nothing_and_asks_for_a_second_look() {
        let mut look = SecondLook::default();
        assert_eq!(look.due_at(), None);
        assert!(!look.invalid(100));
        assert_eq!(look.due_at(), Some(100 + RECHECK_MS));
        // An event right after (the hypervisor's, following its rewrite) is too soon to judge.
        assert!(!look.invalid(101));
        assert_eq!(look.since(), Some(100));
    }

    #[test]
    fn a_valid_read_between_two_invalid_ones_forgives_the_first() {
        let mut look = SecondLook::default();
        assert!(!look.invalid(100));
        look.valid();
        assert_eq!(look.due_at(), None);
        assert!(!look.invalid(100 + RECHECK_MS));
        assert!(look.invalid(100 + 2 * RECHECK_MS));
    }

    #[test]
    fn invalid_on_two_looks_apart_closes_once_then_counts_afresh() {
        let mut look = SecondLook::default();
        assert!(!look.invalid(5));
        assert!(look.invalid(5 + RECHECK_MS));
        assert_eq!(look.due_at(), None);
        assert!(!look.invalid(5 + RECHECK_MS + 1));
    }

    #[test]
    fn times_near_the_end_of_the_clock_do_not_overflow() {
        let mut look = SecondLook::default();
        assert!(!look.invalid(u64::MAX - 1));
        assert_eq!(look.due_at(), Some(u64::MAX));
        assert!(look.invalid(u64::MAX));
    }
}
