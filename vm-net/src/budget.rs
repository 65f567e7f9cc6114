//! A count of frames against a limit, for pacing work in rounds: the front-end hands its stack
//! at most so many received frames per round, the driver domain flushes its guests' events
//! every so many frames it switches (issue 11: both let a receiver acknowledge part of a burst
//! while the rest is still on its way).

/// Frames counted since the last [`FrameBudget::reset`], out of `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameBudget {
    limit: usize,
    taken: usize,
}

impl FrameBudget {
    /// A budget of `limit` frames (at least 1: a budget of none would stop the work for good).
    pub const fn new(limit: usize) -> FrameBudget {
        FrameBudget {
            limit: if limit == 0 { 1 } else { limit },
            taken: 0,
        }
    }

    /// Counts one frame if the budget has room for it; false (nothing counted) once spent.
    pub fn try_take(&mut self) -> bool {
        if self.spent() {
            return false;
        }
        self.taken += 1;
        true
    }

    /// Whether every frame of the budget was taken.
    pub fn spent(&self) -> bool {
        self.taken >= self.limit
    }

    /// A new round: the whole budget again.
    pub fn reset(&mut self) {
        self.taken = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_its_limit_then_nothing_until_reset() {
        let mut b = FrameBudget::new(3);
        assert!(!b.spent());
        assert!(b.try_take() && b.try_take());
        assert!(!b.spent());
        assert!(b.try_take());
        assert!(b.spent());
        assert!(!b.try_take(), "a spent budget takes nothing");
        assert!(b.spent());
        b.reset();
        assert!(!b.spent());
        assert!(b.try_take());
    }

    #[test]
    fn a_zero_limit_still_lets_one_frame_through_per_round() {
        let mut b = FrameBudget::new(0);
        assert!(b.try_take());
        assert!(!b.try_take());
        b.reset();
        assert!(b.try_take());
    }
}
