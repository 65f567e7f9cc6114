//! A count of frames and their bytes against limits, for pacing work in rounds: the front-end
//! hands its stack at most so much received data per round, the driver domain flushes its
//! guests' events every so much data it switches (issue 11: both let a receiver acknowledge
//! part of a burst while the rest is still on its way). Both limits count: a round of
//! 9000-byte frames ends on the frame count, a round of 64 KiB frames on the bytes, so a whole
//! window of large frames is never one round.

/// Frames and bytes counted since the last [`FrameBudget::reset`], out of their limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameBudget {
    frame_limit: usize,
    byte_limit: usize,
    frames: usize,
    bytes: usize,
}

impl FrameBudget {
    /// A budget of `frame_limit` frames or `byte_limit` bytes, whichever is reached first
    /// (each at least 1: a budget of nothing would stop the work for good; the frame that
    /// crosses the byte limit is still taken, so a round always takes at least one frame).
    pub const fn new(frame_limit: usize, byte_limit: usize) -> FrameBudget {
        FrameBudget {
            frame_limit: if frame_limit == 0 { 1 } else { frame_limit },
            byte_limit: if byte_limit == 0 { 1 } else { byte_limit },
            frames: 0,
            bytes: 0,
        }
    }

    /// Counts one frame of `bytes` if the budget has room for it; false (nothing counted) once
    /// spent.
    pub fn try_take(&mut self, bytes: usize) -> bool {
        if self.spent() {
            return false;
        }
        self.frames += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        true
    }

    /// Whether the frames or the bytes of the budget were all taken.
    pub fn spent(&self) -> bool {
        self.frames >= self.frame_limit || self.bytes >= self.byte_limit
    }

    /// A new round: the whole budget again.
    pub fn reset(&mut self) {
        self.frames = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_its_frames_then_nothing_until_reset() {
        let mut b = FrameBudget::new(3, usize::MAX);
        assert!(!b.spent());
        assert!(b.try_take(100) && b.try_take(100));
        assert!(!b.spent());
        assert!(b.try_take(100));
        assert!(b.spent());
        assert!(!b.try_take(100), "a spent budget takes nothing");
        assert!(b.spent());
        b.reset();
        assert!(!b.spent());
        assert!(b.try_take(100));
    }

    #[test]
    fn large_frames_spend_the_bytes_before_the_frames() {
        // The front-end's round: 16 frames of 9000-byte MTU fit the bytes, 64 KiB frames
        // end it after three.
        let mut b = FrameBudget::new(16, 144 * 1024);
        for _ in 0..16 {
            assert!(b.try_take(9014));
        }
        assert!(
            b.spent(),
            "the frame count ends a round of 9000-byte frames"
        );
        b.reset();
        let mut taken = 0;
        while b.try_take(65535 + 14) {
            taken += 1;
        }
        assert_eq!(
            taken, 3,
            "the frame crossing the byte limit is the last one"
        );
        assert!(!b.try_take(60), "nothing more, however small");
    }

    #[test]
    fn zero_limits_still_let_one_frame_through_per_round() {
        for (frames, bytes) in [(0, 1000), (5, 0), (0, 0)] {
            let mut b = FrameBudget::new(frames, bytes);
            assert!(b.try_take(1500), "{frames} {bytes}");
            if frames == 0 || bytes <= 1500 {
                assert!(!b.try_take(1500));
            }
            b.reset();
            assert!(b.try_take(1500));
        }
    }

    #[test]
    fn byte_counts_saturate_instead_of_wrapping() {
        let mut b = FrameBudget::new(usize::MAX, usize::MAX);
        assert!(b.try_take(usize::MAX - 1));
        assert!(b.try_take(usize::MAX - 1));
        assert!(
            b.spent(),
            "saturated at the limit, not wrapped to a small count"
        );
    }
}
