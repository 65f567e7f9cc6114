//! Which pages of a VM's grant window are in use: the allocator behind every VM runtime's grant
//! mappings (a back-end maps each front-end's buffer pool as one contiguous run). It lives here,
//! next to the window's layout, because it is pure logic the host can test.
//!
//! First fit over the free runs, and every returned run merges with its neighbours (and with the
//! untouched top of the window), so reconnects with changing pool sizes cannot fragment the
//! window for good: once a run is free again, its space is whole again. The free list has a fixed
//! capacity (no allocation): merged runs number at most one more than the live ones.

use heapless::Vec;

/// Page runs of a window of `pages` pages, with room to remember `N` separate free runs.
#[derive(Debug)]
pub struct WindowRuns<const N: usize> {
    pages: u64,
    /// Pages at and above this index have never been handed out (or came back and merged).
    top: u64,
    /// Free runs below `top`: (first page, pages), sorted, never adjacent to each other or to
    /// `top`.
    free: Vec<(u64, u64), N>,
    /// Pages given back while the free list was full: lost until the VM restarts.
    lost: u64,
}

impl<const N: usize> WindowRuns<N> {
    pub const fn new(pages: u64) -> Self {
        WindowRuns {
            pages,
            top: 0,
            free: Vec::new(),
            lost: 0,
        }
    }

    /// `count` contiguous pages; the first page's index, or `None` when no run is long enough.
    pub fn take(&mut self, count: u64) -> Option<u64> {
        if count == 0 {
            return None;
        }
        if let Some(i) = self.free.iter().position(|&(_, n)| n >= count) {
            let (first, n) = self.free[i];
            if n == count {
                self.free.remove(i);
            } else {
                self.free[i] = (first + count, n - count);
            }
            return Some(first);
        }
        if count > self.pages - self.top {
            return None;
        }
        let first = self.top;
        self.top += count;
        Some(first)
    }

    /// Gives back `count` pages from `first` (a run [`take`](Self::take) handed out). A run that
    /// is not inside the used part of the window, or overlaps a free one, is ignored: returning
    /// it twice must not make the same pages free twice.
    pub fn give_back(&mut self, first: u64, count: u64) {
        let Some(end) = first
            .checked_add(count)
            .filter(|&end| count > 0 && end <= self.top)
        else {
            return;
        };
        let at = self.free.partition_point(|&(f, _)| f < first);
        let overlaps_before = at > 0 && {
            let (f, n) = self.free[at - 1];
            f + n > first
        };
        let overlaps_after = at < self.free.len() && self.free[at].0 < end;
        if overlaps_before || overlaps_after {
            return;
        }
        if self.free.insert(at, (first, count)).is_err() {
            // More separate free runs than the list holds: these pages are not reused. With
            // merging this takes more live runs than a VM can map.
            self.lost += count;
            return;
        }
        // Merge with the following run, then the preceding one.
        if at + 1 < self.free.len() && self.free[at].0 + self.free[at].1 == self.free[at + 1].0 {
            self.free[at].1 += self.free[at + 1].1;
            self.free.remove(at + 1);
        }
        if at > 0 && self.free[at - 1].0 + self.free[at - 1].1 == self.free[at].0 {
            self.free[at - 1].1 += self.free[at].1;
            self.free.remove(at);
        }
        // A free run that reaches the top goes back to the untouched part.
        if let Some(&(f, n)) = self.free.last() {
            if f + n == self.top {
                self.top = f;
                self.free.pop();
            }
        }
    }

    /// Pages handed out and not given back (including any [`lost`](Self::lost)).
    pub fn in_use(&self) -> u64 {
        self.top - self.free.iter().map(|&(_, n)| n).sum::<u64>()
    }

    /// Pages given back while the free list was full, never reused.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Free runs below the top (a measure of fragmentation).
    pub fn free_runs(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reconnects_with_changing_pool_sizes_do_not_use_the_window_up() {
        // A window that holds two big pools at once, and a guest reconnecting ten thousand
        // times with pools of alternating sizes beside a long-lived neighbour.
        let mut w = WindowRuns::<8>::new(1000);
        let neighbour = w.take(430).unwrap();
        for i in 0..10_000u64 {
            let pages = if i % 2 == 0 { 100 } else { 430 };
            let run = w.take(pages).expect("the window must not fill up");
            w.give_back(run, pages);
        }
        assert_eq!(w.in_use(), 430);
        assert_eq!(w.free_runs(), 0);
        w.give_back(neighbour, 430);
        assert_eq!((w.in_use(), w.free_runs()), (0, 0));
        assert_eq!(w.take(1000), Some(0), "everything merged back into one run");
    }

    #[test]
    fn runs_merge_with_both_neighbours_and_bad_returns_are_ignored() {
        let mut w = WindowRuns::<8>::new(100);
        let [a, b, c, d] = [10, 20, 30, 5].map(|n| w.take(n).unwrap());
        assert_eq!([a, b, c, d], [0, 10, 30, 60]);
        w.give_back(a, 10);
        w.give_back(c, 30);
        assert_eq!(w.free_runs(), 2);
        w.give_back(b, 20);
        assert_eq!(w.free_runs(), 1, "a, b and c are one run now");
        assert_eq!(w.take(60), Some(0));
        // Twice, overlapping, outside, empty: ignored.
        w.give_back(d, 5);
        w.give_back(d, 5);
        w.give_back(0, 61);
        w.give_back(90, 10);
        w.give_back(u64::MAX, 2);
        w.give_back(3, 0);
        assert_eq!(w.in_use(), 60);
        assert_eq!(w.take(0), None);
        assert_eq!(w.take(41), None);
        assert_eq!(w.take(40), Some(60));
    }

    #[test]
    fn a_full_free_list_loses_pages_but_never_hands_them_out_twice() {
        let mut w = WindowRuns::<1>::new(10);
        let runs: Vec<u64, 10> = (0..10).map(|_| w.take(1).unwrap()).collect();
        w.give_back(runs[2], 1);
        w.give_back(runs[5], 1);
        assert_eq!((w.free_runs(), w.lost()), (1, 1));
        assert_eq!(w.take(1), Some(2));
        assert_eq!(w.take(1), None, "page 5 is lost, not free");
    }

    proptest! {
        /// Against a page-by-page model: runs handed out never overlap, `in_use` is exact, and
        /// once everything is back the window is one free run again.
        #[test]
        fn matches_a_page_map(ops in proptest::collection::vec((any::<bool>(), 1u64..40, any::<prop::sample::Index>()), 1..200)) {
            let mut w = WindowRuns::<256>::new(256);
            let mut used = [false; 256];
            let mut live: std::vec::Vec<(u64, u64)> = std::vec::Vec::new();
            for (take, count, pick) in ops {
                if take || live.is_empty() {
                    if let Some(first) = w.take(count) {
                        for p in first..first + count {
                            prop_assert!(!used[p as usize], "page {} handed out twice", p);
                            used[p as usize] = true;
                        }
                        live.push((first, count));
                    }
                } else {
                    let (first, count) = live.swap_remove(pick.index(live.len()));
                    for p in first..first + count {
                        used[p as usize] = false;
                    }
                    w.give_back(first, count);
                }
                prop_assert_eq!(w.in_use(), used.iter().filter(|&&u| u).count() as u64);
            }
            for (first, count) in live.drain(..) {
                w.give_back(first, count);
            }
            prop_assert_eq!(w.take(256), Some(0));
        }
    }
}
