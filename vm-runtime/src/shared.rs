//! A run of pages shared with a peer VM (our own pages we granted, a peer's pages mapped in
//! our grant window, or a connection's control page), as the virtqueue code of
//! `shared_abi::virtq` accesses it: ring words as `AtomicU16` ([`RingMem`]), buffer bytes with
//! copies ([`PoolMem`]), and whole pages as atomic words ([`SharedMem::words`]).
//!
//! One of the runtime's two rooms for code the compiler cannot check (with `arch`): every
//! raw access to memory a peer writes is here. A `SharedMem` can only be made over memory no
//! Rust reference of ours points into (leaked pages, the grant window, the control window),
//! which is what makes the views below sound.
//!
//! The peer writes this memory whenever it likes, so nothing here ever hands out a plain
//! reference into it: ring words are atomics, and buffer copies are volatile word-at-a-time
//! loads and stores, so the compiler neither merges nor repeats them (no double fetch behind
//! the caller's back) and a torn read is just some bytes, which the caller validates.

use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};

use shared_abi::grant::{GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE};
use shared_abi::layout::{control_page_ipa, MAX_VMS, PAGE_SIZE};

use crate::page::Page;
use shared_abi::virtq::{PoolMem, RingMem, RING_PAGE_LEN};

/// `pages` pages of shared memory at `base` (identity-mapped: VA = GPA).
#[derive(Clone, Copy, Debug)]
pub struct SharedMem {
    base: usize,
    len: usize,
    /// Leaked pages of our own RAM (not the grant or control window): the only memory an
    /// [`ExclusiveRun`] may be made of.
    own: bool,
}

impl SharedMem {
    /// `pages` pages of our grant window from `gpa` (where peers' frames are mapped), if the
    /// whole run lies inside it and `gpa` is page aligned. Whether anything is mapped there is
    /// the hypervisor's business: an access to a page that is not (or no longer) mapped, or a
    /// store to a read-only one, is a stage-2 fault and the hypervisor stops this VM; it can
    /// never reach memory of ours.
    pub fn in_grant_window(gpa: u64, pages: usize) -> Option<SharedMem> {
        let len = u64::try_from(pages).ok()?.checked_mul(PAGE_SIZE)?;
        let end = gpa.checked_add(len)?;
        let inside = gpa.is_multiple_of(PAGE_SIZE)
            && gpa >= GRANT_WINDOW_BASE
            && end <= GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE;
        inside.then_some(SharedMem {
            base: gpa as usize,
            len: len as usize,
            own: false,
        })
    }

    /// The control page of the connection whose front-end is VM `frontend` (mapped by the
    /// hypervisor at `control_page_ipa(frontend)` in both VMs of a connection), if the id is a
    /// possible VM id. As in the grant window, an access where nothing is mapped faults
    /// into the hypervisor and never reaches memory of ours.
    pub fn control_page(frontend: u16) -> Option<SharedMem> {
        (usize::from(frontend) <= MAX_VMS).then_some(SharedMem {
            base: control_page_ipa(frontend) as usize,
            len: PAGE_SIZE as usize,
            own: false,
        })
    }

    /// `pages` zeroed pages of our own RAM, leaked (they will be granted: see `page`).
    pub fn leak_pages(pages: usize) -> SharedMem {
        let pages = pages.max(1);
        let run = Page::leak_many(pages);
        // The pages are ours, page aligned, contiguous, mapped read-write as Normal memory,
        // and leaked, so they stay valid forever; `Page` is atomics only, so the
        // `&'static [Page]` dropped here never conflicts with our accesses or the peer's.
        SharedMem {
            base: run.as_ptr() as usize,
            len: pages * PAGE_SIZE as usize,
            own: true,
        }
    }

    /// The run as 64-bit words (a granted page, a control page): the peer writes them at any
    /// time, so they are atomics.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: every `SharedMem` is page aligned and lies in our leaked pages, the grant
        // window or the control window (its constructors), none of which Rust ever holds a
        // plain reference into: only atomics and volatile accesses touch them, so an
        // `AtomicU64` view is sound even while the peer writes. Where nothing is mapped an
        // access faults into the hypervisor, which stops this VM.
        unsafe { core::slice::from_raw_parts(self.base as *const AtomicU64, self.len / 8) }
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
            own: self.own,
        })
    }

    fn halfword(&self, offset: usize) -> &AtomicU16 {
        assert!(offset.is_multiple_of(2) && offset + 2 <= self.len);
        // SAFETY: in bounds and 2-aligned (checked above; base is page aligned), and its
        // constructors make the memory valid for the life of `self` (see `words`); only atomics and volatile
        // accesses touch it, so an `AtomicU16` view is sound even while the peer writes.
        unsafe { &*((self.base + offset) as *const AtomicU16) }
    }
}

impl SharedMem {
    /// Copies `len` bytes at `offset` into the front of `buf`, a private buffer reused from
    /// frame to frame (a front-end's received frame): it only ever grows (zero-filled when it
    /// does), so a frame no longer than the largest before costs the copy alone, no allocation
    /// and no clearing pass. The bytes after `len` are left as they were. Returns `&buf[..len]`.
    /// Panics if the range is outside the run.
    pub fn read_into_reused<'b>(
        &self,
        offset: usize,
        len: usize,
        buf: &'b mut Vec<u8>,
    ) -> &'b [u8] {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.read(offset, &mut buf[..len]);
        &buf[..len]
    }

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
            // which the constructors keep in memory only peers and atomics touch (see `words`).
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

/// Pages of our own that no peer can write: the tail of a run we granted with the tail
/// read-only ([`crate::grant::grant_run`]), so the hypervisor maps it read-only for the peer
/// and refuses GRANT_COPY into it. Only we write these bytes, so code may hold a plain
/// `&mut [u8]` over them for a while ([`ExclusiveRun::with_mut`]): a front-end lets its stack
/// build frames to send right in its transmit buffers. The peer may read them at any time
/// (it copies a frame out once, after we publish it with release ordering on the ring).
///
/// Not `Copy` or `Clone`, and `with_mut` takes `&mut self`, so at most one such slice exists
/// at a time. Valid for as long as the grants stay read-only: the front-end never ends them.
#[derive(Debug)]
pub struct ExclusiveRun {
    base: usize,
    len: usize,
}

impl ExclusiveRun {
    /// The part of `mem` from byte `from` on, if `mem` is leaked memory of our own and `from`
    /// is page aligned and inside it. Only the grant code makes one, for pages it has just
    /// granted read-only.
    pub(crate) fn tail_of(mem: &SharedMem, from: usize) -> Option<ExclusiveRun> {
        (mem.own && from.is_multiple_of(PAGE_SIZE as usize) && from < mem.len).then_some(
            ExclusiveRun {
                base: mem.base + from,
                len: mem.len - from,
            },
        )
    }

    /// Bytes in the run.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `f` on bytes `offset..offset + len` as a plain mutable slice and returns what it
    /// returns. Panics if the range is outside the run (a caller bug: the ranges come from
    /// our own pool plan).
    pub fn with_mut<R>(&mut self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(offset <= self.len && len <= self.len - offset);
        // SAFETY: the range is inside the run (asserted above), which is leaked RAM of our own
        // (valid forever, `tail_of` checked `own`) that no peer can write: it was granted
        // read-only, so the hypervisor maps it read-only for the peer and refuses copies into
        // it. No other Rust reference points into it (a `SharedMem` view only makes volatile
        // accesses for the span of one call, and `&mut self` keeps a second slice from
        // existing), so for `f`'s duration the slice is the only way to the bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts_mut((self.base + offset) as *mut u8, len) };
        f(bytes)
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
            // SAFETY: inside the run (asserted above), which the constructors keep in shared memory (see `words`); `out` is
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
            // SAFETY: inside the run (asserted above), shared memory per the constructors (see `words`); `from` is
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A run over a host buffer (8-aligned, as pages are), for the copy code.
    fn over(buf: &mut [u64]) -> SharedMem {
        SharedMem {
            base: buf.as_mut_ptr() as usize,
            len: buf.len() * 8,
            own: true,
        }
    }

    #[test]
    fn an_exclusive_run_is_only_made_over_our_own_pages_from_a_page_boundary() {
        let window = SharedMem::in_grant_window(GRANT_WINDOW_BASE, 3).unwrap();
        assert!(ExclusiveRun::tail_of(&window, PAGE_SIZE as usize).is_none());
        assert!(ExclusiveRun::tail_of(&SharedMem::control_page(1).unwrap(), 0).is_none());
        // A 3-page buffer of our own; page alignment of the base does not matter to the view.
        let mut buf = vec![0u64; 3 * PAGE_SIZE as usize / 8];
        let own = over(&mut buf);
        assert!(
            ExclusiveRun::tail_of(&own, 100).is_none(),
            "not a page boundary"
        );
        assert!(
            ExclusiveRun::tail_of(&own, 3 * PAGE_SIZE as usize).is_none(),
            "empty"
        );
        let mut tail = ExclusiveRun::tail_of(&own, PAGE_SIZE as usize).unwrap();
        assert_eq!(tail.len(), 2 * PAGE_SIZE as usize);
        // What is written through the slice is what the shared view then reads, at the right
        // place, and nothing around it moves.
        let written = tail.with_mut(10, 5, |bytes| {
            bytes.copy_from_slice(&[1, 2, 3, 4, 5]);
            bytes.len()
        });
        assert_eq!(written, 5);
        let mut back = [0u8; 7];
        own.read(PAGE_SIZE as usize + 9, &mut back);
        assert_eq!(back, [0, 1, 2, 3, 4, 5, 0]);
    }

    #[test]
    #[should_panic]
    fn an_exclusive_slice_past_the_run_is_refused() {
        let mut buf = vec![0u64; 2 * PAGE_SIZE as usize / 8];
        let own = over(&mut buf);
        let mut tail = ExclusiveRun::tail_of(&own, PAGE_SIZE as usize).unwrap();
        tail.with_mut(PAGE_SIZE as usize - 4, 5, |_| ());
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn only_whole_page_aligned_runs_inside_the_grant_window_are_made() {
        let page = PAGE_SIZE;
        let end = GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE;
        let run = SharedMem::in_grant_window(GRANT_WINDOW_BASE, 3).unwrap();
        assert_eq!(
            (run.gpa(), run.len()),
            (GRANT_WINDOW_BASE, 3 * page as usize)
        );
        let all = (GRANT_WINDOW_SIZE / page) as usize;
        assert!(SharedMem::in_grant_window(GRANT_WINDOW_BASE, all).is_some());
        assert!(SharedMem::in_grant_window(end - page, 1).is_some());
        for (gpa, pages) in [
            (end - page, 2),
            (end, 1),
            (GRANT_WINDOW_BASE - page, 1),
            (GRANT_WINDOW_BASE + 8, 1),
            (GRANT_WINDOW_BASE, all + 1),
            (u64::MAX - page + 1, 1),
            (GRANT_WINDOW_BASE, usize::MAX),
            // Our RAM is never foreign memory.
            (0x4000_0000, 1),
        ] {
            assert!(
                SharedMem::in_grant_window(gpa, pages).is_none(),
                "{gpa:#x} x {pages}"
            );
        }
    }

    #[test]
    fn control_pages_exist_for_vm_ids_only() {
        for id in [0, 1, MAX_VMS as u16] {
            let page = SharedMem::control_page(id).unwrap();
            assert_eq!(page.gpa(), control_page_ipa(id));
            assert_eq!(page.words().len(), PAGE_SIZE as usize / 8);
        }
        assert!(SharedMem::control_page(MAX_VMS as u16 + 1).is_none());
        assert!(SharedMem::control_page(u16::MAX).is_none());
    }

    #[test]
    fn reads_and_writes_copy_exactly_the_range_at_every_alignment() {
        for offset in 0..16 {
            for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100] {
                let mut backing = vec![0u64; 32];
                let mem = over(&mut backing);
                let data = pattern(len, offset as u8);
                mem.write(offset, &data);
                // Private side unaligned too.
                let mut out = vec![0xeeu8; len + 1];
                mem.read(offset, &mut out[1..]);
                assert_eq!(&out[1..], &data[..], "offset {offset} len {len}");
                let bytes: Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
                assert!(bytes[..offset].iter().all(|&b| b == 0));
                assert_eq!(&bytes[offset..offset + len], &data[..]);
                assert!(bytes[offset + len..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn copies_between_runs_move_exactly_the_range_at_every_alignment() {
        for (from, to) in [(0, 0), (3, 3), (8, 0), (1, 6), (5, 0), (0, 13)] {
            for len in [0, 1, 8, 31, 32, 33, 65, 120] {
                let mut src_backing = vec![0u64; 32];
                let mut dst_backing = vec![0u64; 32];
                let src = over(&mut src_backing);
                let dst = over(&mut dst_backing);
                let data = pattern(len, 9);
                src.write(from, &data);
                src.copy_to(from, &dst, to, len);
                let mut got = vec![0u8; len];
                dst.read(to, &mut got);
                assert_eq!(got, data, "from {from} to {to} len {len}");
                let bytes: Vec<u8> = dst_backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
                assert!(bytes[..to].iter().all(|&b| b == 0));
                assert!(bytes[to + len..].iter().all(|&b| b == 0));
            }
        }
    }

    proptest::proptest! {
        /// Frames of any lengths, one after another into one reused buffer: each read gives
        /// exactly its range, the buffer never shrinks, and it grows only to the longest.
        #[test]
        fn reads_into_a_reused_buffer_give_exactly_each_frame(
            frames in proptest::collection::vec((0usize..200, 0usize..56), 1..12),
            start in 0usize..80,
        ) {
            let mut backing: Vec<u64> = (0..32u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
            let mem = over(&mut backing);
            let bytes: Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let mut buf = vec![0xaau8; start];
            let mut longest = start;
            for (offset, len) in frames {
                let before = buf.clone();
                let got = mem.read_into_reused(offset, len, &mut buf).to_vec();
                proptest::prop_assert_eq!(&got[..], &bytes[offset..offset + len]);
                longest = longest.max(len);
                proptest::prop_assert_eq!(buf.len(), longest);
                // Past the frame: what was there, or zeros where the buffer grew.
                for (i, &b) in buf.iter().enumerate().skip(len) {
                    proptest::prop_assert_eq!(b, before.get(i).copied().unwrap_or(0));
                }
            }
        }
    }

    #[test]
    #[should_panic]
    fn a_read_past_the_run_is_refused() {
        let mut backing = vec![0u64; 4];
        let mut out = [0u8; 8];
        over(&mut backing).read(25, &mut out);
    }

    #[test]
    fn ring_halfwords_and_page_words_see_the_same_bytes() {
        let mut backing = vec![0u64; 8];
        let mem = over(&mut backing);
        mem.store_u16_release(2, 0xbeef);
        mem.store_u16(6, 0x1234);
        assert_eq!(mem.load_u16_acquire(2), 0xbeef);
        assert_eq!(mem.load_u16(6), 0x1234);
        let words = mem.words();
        assert_eq!(words.len(), 8);
        let w0 = words[0].load(Ordering::Relaxed);
        assert_eq!(w0.to_le_bytes()[2..4], 0xbeefu16.to_le_bytes());
        words[1].store(u64::from_le_bytes(*b"sluice!!"), Ordering::Relaxed);
        let mut out = [0u8; 8];
        mem.read(8, &mut out);
        assert_eq!(&out, b"sluice!!");
    }
}
