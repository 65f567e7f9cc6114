//! Physical frame allocator: owns the free RAM the hypervisor hands out for VM memory and
//! stage-2 tables.
//!
//! The buddy work is done by `buddy_system_allocator::FrameAllocator` on frame numbers
//! (pa / 4 KiB). This wrapper adds physical addresses, alignment, exact page accounting and a
//! record of live allocations, so that a bad `free` (never allocated, already freed, wrong size,
//! never added) is refused with [`FrameError`] instead of corrupting the buddy lists.
//!
//! A buddy allocator only hands out power-of-two blocks aligned to their size. An allocation of
//! `pages` with alignment `align_pages` takes one block of `max(next_pow2(pages), align_pages)`
//! and immediately gives back the tail beyond `pages`, so a 3-page allocation costs 3 pages.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;

/// Bytes in a frame.
pub const FRAME_SIZE: u64 = 1 << 12;

/// Largest block is 2^(ORDER - 1) frames (8 TiB), well beyond any machine we run on.
const ORDER: usize = 32;

/// Why a frame allocator request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `end` lies below `start`.
    #[error("region ends before it starts")]
    InvalidRange,
    /// The region overlaps one added earlier.
    #[error("region overlaps one already added")]
    Overlap,
    /// `free` of a range that is not exactly a live allocation (never added, never allocated,
    /// already freed, or a different size).
    #[error("not a live allocation of that size")]
    NotAllocated,
}

/// Buddy allocator of 4 KiB physical frames.
pub struct FrameAllocator {
    buddy: buddy_system_allocator::FrameAllocator<ORDER>,
    /// Added regions as frame-number ranges, to refuse double adds.
    regions: Vec<(u64, u64)>,
    /// Live allocations: first frame → page count.
    live: BTreeMap<u64, usize>,
    free: usize,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        FrameAllocator {
            buddy: buddy_system_allocator::FrameAllocator::new(),
            regions: Vec::new(),
            live: BTreeMap::new(),
            free: 0,
        }
    }

    /// Adds the whole frames inside `[start, end)`. A bad region is a boot-time bug: it is
    /// ignored (caught by a debug assertion); [`FrameAllocator::try_add_region`] reports it.
    pub fn add_region(&mut self, start: u64, end: u64) {
        let added = self.try_add_region(start, end);
        debug_assert!(
            added.is_ok(),
            "bad frame region {start:#x}..{end:#x}: {added:?}"
        );
    }

    /// Adds the whole frames inside `[start, end)` (rounded inward to 4 KiB); returns how many.
    pub fn try_add_region(&mut self, start: u64, end: u64) -> Result<usize, FrameError> {
        if end < start {
            return Err(FrameError::InvalidRange);
        }
        let first = start.div_ceil(FRAME_SIZE);
        let last = end / FRAME_SIZE;
        if last <= first {
            return Ok(0);
        }
        if self.regions.iter().any(|&(s, e)| first < e && s < last) {
            return Err(FrameError::Overlap);
        }
        self.regions.push((first, last));
        self.buddy.add_frame(first as usize, last as usize);
        let pages = (last - first) as usize;
        self.free += pages;
        Ok(pages)
    }

    /// `pages` contiguous frames starting at a multiple of `align_pages` frames (a power of two);
    /// their physical address. None when there is no such run, `pages` is 0, or the alignment is
    /// not a power of two.
    pub fn alloc(&mut self, pages: usize, align_pages: usize) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let layout = Layout::from_size_align(pages, align_pages).ok()?;
        let block = pages.checked_next_power_of_two()?.max(align_pages);
        let first = self.buddy.alloc_aligned(layout)?;
        self.release(first + pages, block - pages);
        self.live.insert(first as u64, pages);
        self.free -= pages;
        Some(first as u64 * FRAME_SIZE)
    }

    /// Gives back an allocation: `pa` and `pages` must be exactly what `alloc` returned and was
    /// asked for.
    pub fn free(&mut self, pa: u64, pages: usize) -> Result<(), FrameError> {
        if !pa.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::NotAllocated);
        }
        let first = pa / FRAME_SIZE;
        if self.live.get(&first) != Some(&pages) {
            return Err(FrameError::NotAllocated);
        }
        self.live.remove(&first);
        self.release(first as usize, pages);
        self.free += pages;
        Ok(())
    }

    /// Gives back the one frame at `pa` out of the middle of a live allocation (a page a VM
    /// gave back to the balloon). The rest of that allocation stays live as up to two
    /// allocations, before and after the frame, each freed on its own later.
    pub fn free_page_within(&mut self, pa: u64) -> Result<(), FrameError> {
        if !pa.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::NotAllocated);
        }
        let frame = pa / FRAME_SIZE;
        let (&first, &pages) = self
            .live
            .range(..=frame)
            .next_back()
            .ok_or(FrameError::NotAllocated)?;
        if frame >= first + pages as u64 {
            return Err(FrameError::NotAllocated);
        }
        self.live.remove(&first);
        let before = (frame - first) as usize;
        let after = pages - before - 1;
        if before > 0 {
            self.live.insert(first, before);
        }
        if after > 0 {
            self.live.insert(frame + 1, after);
        }
        self.release(frame as usize, 1);
        self.free += 1;
        Ok(())
    }

    /// Frames currently free.
    pub fn free_pages(&self) -> usize {
        self.free
    }

    /// Returns `[first, first + count)` to the buddy lists as size-aligned power-of-two pieces,
    /// the only shape the buddy allocator can take back.
    fn release(&mut self, mut first: usize, mut count: usize) {
        while count > 0 {
            let align = if first == 0 {
                usize::MAX
            } else {
                1 << first.trailing_zeros()
            };
            let fits = 1 << count.ilog2();
            let piece = align.min(fits);
            self.buddy.dealloc(first, piece);
            first += piece;
            count -= piece;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn with_ram(start: u64, end: u64) -> FrameAllocator {
        let mut f = FrameAllocator::new();
        f.try_add_region(start, end).unwrap();
        f
    }

    #[test]
    fn a_frame_freed_out_of_an_allocation_splits_it() {
        let mut a = FrameAllocator::new();
        a.add_region(0x10_0000, 0x20_0000);
        let total = a.free_pages();
        let pa = a.alloc(8, 1).unwrap();
        // Frame 3 of 8, then frame 0 and the last one: three holes, four pages left live.
        a.free_page_within(pa + 3 * FRAME_SIZE).unwrap();
        a.free_page_within(pa).unwrap();
        a.free_page_within(pa + 7 * FRAME_SIZE).unwrap();
        assert_eq!(a.free_pages(), total - 5);
        // Twice, outside anything, or unaligned: refused, nothing changes.
        for bad in [pa + 3 * FRAME_SIZE, pa, 0x30_0000, pa + 5 * FRAME_SIZE + 1] {
            assert_eq!(a.free_page_within(bad), Err(FrameError::NotAllocated));
        }
        // The old allocation as a whole is gone; its pieces free exactly.
        assert_eq!(a.free(pa, 8), Err(FrameError::NotAllocated));
        a.free(pa + FRAME_SIZE, 2).unwrap();
        a.free(pa + 4 * FRAME_SIZE, 3).unwrap();
        assert_eq!(a.free_pages(), total);
        // Everything is one buddy block again: the whole region can be taken at once.
        assert!(a.alloc(total, 1).is_some());
    }

    #[test]
    fn add_region_rounds_inward() {
        let mut f = FrameAllocator::new();
        assert_eq!(f.try_add_region(0x4000_0001, 0x4000_5fff), Ok(4));
        assert_eq!(f.free_pages(), 4);
        // Less than a frame once rounded: nothing, and not an error.
        assert_eq!(f.try_add_region(0x5000_0001, 0x5000_0fff), Ok(0));
        let pas: Vec<u64> = (0..4).map(|_| f.alloc(1, 1).unwrap()).collect();
        assert!(pas
            .iter()
            .all(|&pa| (0x4000_1000..0x4000_5000).contains(&pa)));
        assert_eq!(f.alloc(1, 1), None);
    }

    #[test]
    fn bad_regions_refused() {
        let mut f = with_ram(0x4000_0000, 0x4010_0000);
        assert_eq!(
            f.try_add_region(0x5000_0000, 0x4000_0000),
            Err(FrameError::InvalidRange)
        );
        assert_eq!(
            f.try_add_region(0x400f_f000, 0x4020_0000),
            Err(FrameError::Overlap)
        );
        assert_eq!(
            f.try_add_region(0x3000_0000, 0x4000_1000),
            Err(FrameError::Overlap)
        );
        assert_eq!(f.free_pages(), 256);
        // Touching is not overlapping.
        f.add_region(0x4010_0000, 0x4020_0000);
        assert_eq!(f.free_pages(), 512);
    }

    #[test]
    fn alignment_honoured() {
        let mut f = with_ram(0x4000_1000, 0x4100_0000);
        for align in [1usize, 2, 4, 16, 64, 512] {
            for pages in [1usize, 3, 5, 17] {
                let pa = f.alloc(pages, align).unwrap();
                assert_eq!(
                    pa % (align as u64 * FRAME_SIZE),
                    0,
                    "{pages} pages aligned {align}"
                );
            }
        }
    }

    #[test]
    fn bad_alloc_arguments_refused() {
        let mut f = with_ram(0x4000_0000, 0x4100_0000);
        assert_eq!(f.alloc(0, 1), None);
        assert_eq!(f.alloc(1, 3), None);
        assert_eq!(f.alloc(1, 0), None);
        assert_eq!(f.alloc(usize::MAX, 1), None);
        assert_eq!(f.free_pages(), 4096);
    }

    #[test]
    fn exhaustion_returns_none_and_free_makes_space() {
        let mut f = with_ram(0x4000_0000, 0x4000_8000);
        let a = f.alloc(3, 1).unwrap();
        assert_eq!(
            f.free_pages(),
            5,
            "a 3-page allocation costs exactly 3 pages"
        );
        let b = f.alloc(4, 4).unwrap();
        let c = f.alloc(1, 1).unwrap();
        assert_eq!(f.free_pages(), 0);
        assert_eq!(f.alloc(1, 1), None);
        f.free(b, 4).unwrap();
        assert_eq!(f.free_pages(), 4);
        assert_eq!(f.alloc(4, 4), Some(b));
        f.free(a, 3).unwrap();
        f.free(c, 1).unwrap();
        f.free(b, 4).unwrap();
        assert_eq!(f.free_pages(), 8);
        // Everything merged back: the whole region is one block again.
        assert_eq!(f.alloc(8, 8), Some(0x4000_0000));
    }

    #[test]
    fn bad_free_refused() {
        let mut f = with_ram(0x4000_0000, 0x4010_0000);
        let pa = f.alloc(2, 1).unwrap();
        assert_eq!(
            f.free(0x9000_0000, 1),
            Err(FrameError::NotAllocated),
            "never added"
        );
        assert_eq!(
            f.free(pa + 1, 2),
            Err(FrameError::NotAllocated),
            "unaligned"
        );
        assert_eq!(f.free(pa, 1), Err(FrameError::NotAllocated), "wrong size");
        assert_eq!(
            f.free(pa + FRAME_SIZE, 1),
            Err(FrameError::NotAllocated),
            "inside"
        );
        assert_eq!(f.free(pa, 2), Ok(()));
        assert_eq!(f.free(pa, 2), Err(FrameError::NotAllocated), "double free");
        assert_eq!(f.free_pages(), 256);
    }

    #[test]
    fn vm_ram_in_2mib_aligned_blocks() {
        // RAM that starts just past a hypervisor image, as on QEMU virt.
        let mut f = with_ram(0x4008_3000, 0x4800_0000);
        let mut got = Vec::new();
        for _ in 0..8 {
            let pa = f.alloc(512, 512).unwrap();
            assert_eq!(pa % (2 * MIB), 0);
            got.push(pa);
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[0] + 2 * MIB <= w[1]));
        // Larger VM RAM: 64 MiB, 2 MiB aligned.
        let big = f.alloc(16384, 512).unwrap();
        assert_eq!(big % (2 * MIB), 0);
        assert!(sorted
            .iter()
            .all(|&pa| pa + 2 * MIB <= big || big + 64 * MIB <= pa));
        f.free(big, 16384).unwrap();
    }

    #[test]
    fn errors_display() {
        let texts = [
            FrameError::InvalidRange,
            FrameError::Overlap,
            FrameError::NotAllocated,
        ]
        .map(|e| e.to_string());
        assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2]);
    }

    proptest! {
        #[test]
        fn live_allocations_never_overlap(
            ops in proptest::collection::vec((1usize..40, 0u32..7, any::<bool>(), any::<prop::sample::Index>()), 1..80)
        ) {
            let mut f = with_ram(0x4000_3000, 0x4040_0000);
            let total = f.free_pages();
            let mut live: Vec<(u64, usize)> = Vec::new();
            for (pages, align_log, free_one, pick) in ops {
                if free_one && !live.is_empty() {
                    let (pa, n) = live.swap_remove(pick.index(live.len()));
                    prop_assert_eq!(f.free(pa, n), Ok(()));
                } else if let Some(pa) = f.alloc(pages, 1 << align_log) {
                    prop_assert_eq!(pa % ((1u64 << align_log) * FRAME_SIZE), 0);
                    prop_assert!(pa >= 0x4000_3000 && pa + pages as u64 * FRAME_SIZE <= 0x4040_0000);
                    for &(other, n) in &live {
                        let disjoint = pa + pages as u64 * FRAME_SIZE <= other || other + n as u64 * FRAME_SIZE <= pa;
                        prop_assert!(disjoint, "{:#x}+{} overlaps {:#x}+{}", pa, pages, other, n);
                    }
                    live.push((pa, pages));
                }
                let used: usize = live.iter().map(|&(_, n)| n).sum();
                prop_assert_eq!(f.free_pages(), total - used);
            }
            for (pa, n) in live {
                prop_assert_eq!(f.free(pa, n), Ok(()));
            }
            prop_assert_eq!(f.free_pages(), total);
        }
    }
}
