//! A run of pages shared with a peer VM (our own pages we granted, or a peer's pages mapped in
//! our grant window), as the virtqueue code of `shared_abi::virtq` accesses it: ring words as
//! `AtomicU16` ([`RingMem`]) and buffer bytes with copies ([`PoolMem`]).
//!
//! The peer writes this memory whenever it likes, so nothing here ever hands out a plain
//! reference into it: ring words are atomics, and buffer copies are volatile word-at-a-time
//! loads and stores, so the compiler neither merges nor repeats them (no double fetch behind
//! the caller's back) and a torn read is just some bytes, which the caller validates.

use core::sync::atomic::{fence, AtomicU16, Ordering};

use shared_abi::layout::PAGE_SIZE;

use crate::page::Page;
use shared_abi::virtq::{PoolMem, RingMem, RING_PAGE_LEN};

/// `pages` pages of shared memory at `base` (identity-mapped: VA = GPA).
#[derive(Clone, Copy, Debug)]
pub struct SharedMem {
    base: usize,
    len: usize,
}

impl SharedMem {
    /// The run of `pages` pages at `base`.
    ///
    /// # Safety
    /// `[base, base + pages * 4 KiB)` must be page aligned, mapped read-write as Normal memory
    /// in this VM, and stay so for as long as this value (or a copy) is used; no Rust reference
    /// to it may exist elsewhere (only other `SharedMem`s and the peer access it).
    pub unsafe fn new(base: u64, pages: usize) -> SharedMem {
        debug_assert!(base.is_multiple_of(PAGE_SIZE));
        SharedMem {
            base: base as usize,
            len: pages * PAGE_SIZE as usize,
        }
    }

    /// `pages` zeroed pages of our own RAM, leaked (they will be granted: see `page`).
    pub fn leak_pages(pages: usize) -> SharedMem {
        let run = Page::leak_many(pages.max(1));
        // SAFETY: the pages are ours, page aligned, contiguous, mapped read-write as Normal
        // memory, and leaked, so they stay valid forever; `Page` is atomics only, so the
        // `&'static [Page]` dropped here never conflicts with our accesses or the peer's.
        unsafe { SharedMem::new(run[0].gpa(), pages.max(1)) }
    }

    /// Guest-physical (= virtual) address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.base as u64
    }

    /// Bytes in the run.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Page `index` of the run as a ring page, if it is inside.
    pub fn ring_page(&self, index: usize) -> Option<SharedMem> {
        let start = index.checked_mul(RING_PAGE_LEN)?;
        (start + RING_PAGE_LEN <= self.len).then_some(SharedMem {
            base: self.base + start,
            len: RING_PAGE_LEN,
        })
    }

    fn halfword(&self, offset: usize) -> &AtomicU16 {
        assert!(offset.is_multiple_of(2) && offset + 2 <= self.len);
        // SAFETY: in bounds and 2-aligned (checked above; base is page aligned), and `new`'s
        // contract makes the memory valid for the life of `self`; only atomics and volatile
        // accesses touch it, so an `AtomicU16` view is sound even while the peer writes.
        unsafe { &*((self.base + offset) as *const AtomicU16) }
    }
}

impl SharedMem {
    /// Copies `len` bytes at `offset` of this run to `dst_offset` of `dst`, memory to memory
    /// (a back-end moving a frame from one guest's pool to another's). Eight bytes at a time
    /// when both sides allow it. Panics if either range is outside its run.
    pub fn copy_to(&self, offset: usize, dst: &SharedMem, dst_offset: usize, len: usize) {
        assert!(offset <= self.len && len <= self.len - offset);
        assert!(dst_offset <= dst.len && len <= dst.len - dst_offset);
        let (src, to) = (self.base + offset, dst.base + dst_offset);
        let mut done = 0;
        let byte = |i: usize| {
            // SAFETY: `i < len`, so both addresses are inside their runs (asserted above),
            // which `new` guarantees mapped (the destination read-write).
            unsafe {
                let b = core::ptr::read_volatile((src + i) as *const u8);
                core::ptr::write_volatile((to + i) as *mut u8, b);
            }
        };
        if (src ^ to).is_multiple_of(8) {
            while done < len && !(src + done).is_multiple_of(8) {
                byte(done);
                done += 1;
            }
            while len - done >= 32 {
                // SAFETY: as above, and both addresses are 8-aligned.
                unsafe {
                    let from = (src + done) as *const u64;
                    let into = (to + done) as *mut u64;
                    let words = [
                        core::ptr::read_volatile(from),
                        core::ptr::read_volatile(from.add(1)),
                        core::ptr::read_volatile(from.add(2)),
                        core::ptr::read_volatile(from.add(3)),
                    ];
                    for (i, w) in words.into_iter().enumerate() {
                        core::ptr::write_volatile(into.add(i), w);
                    }
                }
                done += 32;
            }
            while len - done >= 8 {
                // SAFETY: as above, and both addresses are 8-aligned.
                unsafe {
                    let w = core::ptr::read_volatile((src + done) as *const u64);
                    core::ptr::write_volatile((to + done) as *mut u64, w);
                }
                done += 8;
            }
        }
        while done < len {
            byte(done);
            done += 1;
        }
    }
}

impl RingMem for SharedMem {
    fn load_u16(&self, offset: usize) -> u16 {
        self.halfword(offset).load(Ordering::Relaxed)
    }
    fn load_u16_acquire(&self, offset: usize) -> u16 {
        self.halfword(offset).load(Ordering::Acquire)
    }
    fn store_u16(&self, offset: usize, value: u16) {
        self.halfword(offset).store(value, Ordering::Relaxed)
    }
    fn store_u16_release(&self, offset: usize, value: u16) {
        self.halfword(offset).store(value, Ordering::Release)
    }
    fn fence(&self) {
        fence(Ordering::SeqCst)
    }
}

impl PoolMem for SharedMem {
    fn size(&self) -> usize {
        self.len
    }

    /// Panics if the range is outside the run (a caller bug: ranges from a peer are checked
    /// before they get here).
    fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset <= self.len && dst.len() <= self.len - offset);
        let src = self.base + offset;
        let len = dst.len();
        let out = dst.as_mut_ptr();
        let mut done = 0;
        // Head bytes until the shared side is 8-aligned, then words (four at a time: this is
        // the data path's copy), then the tail. The private side may be unaligned.
        while done < len && !(src + done).is_multiple_of(8) {
            // SAFETY: inside the run (asserted above), which `new` guarantees mapped; `out` is
            // valid for `len` bytes.
            unsafe { *out.add(done) = core::ptr::read_volatile((src + done) as *const u8) };
            done += 1;
        }
        while len - done >= 32 {
            // SAFETY: as above; the shared address is 8-aligned.
            unsafe {
                let from = (src + done) as *const u64;
                let to = out.add(done) as *mut u64;
                let words = [
                    core::ptr::read_volatile(from),
                    core::ptr::read_volatile(from.add(1)),
                    core::ptr::read_volatile(from.add(2)),
                    core::ptr::read_volatile(from.add(3)),
                ];
                for (i, w) in words.into_iter().enumerate() {
                    core::ptr::write_unaligned(to.add(i), w);
                }
            }
            done += 32;
        }
        while len - done >= 8 {
            // SAFETY: as above.
            unsafe {
                let w = core::ptr::read_volatile((src + done) as *const u64);
                core::ptr::write_unaligned(out.add(done) as *mut u64, w);
            }
            done += 8;
        }
        while done < len {
            // SAFETY: as above.
            unsafe { *out.add(done) = core::ptr::read_volatile((src + done) as *const u8) };
            done += 1;
        }
    }

    /// Panics if the range is outside the run.
    fn write(&self, offset: usize, src: &[u8]) {
        assert!(offset <= self.len && src.len() <= self.len - offset);
        let dst = self.base + offset;
        let len = src.len();
        let from = src.as_ptr();
        let mut done = 0;
        while done < len && !(dst + done).is_multiple_of(8) {
            // SAFETY: inside the run (asserted above), mapped read-write per `new`; `from` is
            // valid for `len` bytes.
            unsafe { core::ptr::write_volatile((dst + done) as *mut u8, *from.add(done)) };
            done += 1;
        }
        while len - done >= 32 {
            // SAFETY: as above; the shared address is 8-aligned.
            unsafe {
                let to = (dst + done) as *mut u64;
                let at = from.add(done) as *const u64;
                let words = [
                    core::ptr::read_unaligned(at),
                    core::ptr::read_unaligned(at.add(1)),
                    core::ptr::read_unaligned(at.add(2)),
                    core::ptr::read_unaligned(at.add(3)),
                ];
                for (i, w) in words.into_iter().enumerate() {
                    core::ptr::write_volatile(to.add(i), w);
                }
            }
            done += 32;
        }
        while len - done >= 8 {
            // SAFETY: as above.
            unsafe {
                let w = core::ptr::read_unaligned(from.add(done) as *const u64);
                core::ptr::write_volatile((dst + done) as *mut u64, w);
            }
            done += 8;
        }
        while done < len {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile((dst + done) as *mut u8, *from.add(done)) };
            done += 1;
        }
    }
}
