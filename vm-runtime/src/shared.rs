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
//! reference into it: ring words are atomics, and buffer copies are raw loads and stores the
//! compiler neither merges nor repeats (no double fetch behind the caller's back); a torn read
//! is just some bytes, which the caller validates.
//!
//! Buffer copies run at memcpy speed (issue 11): where the two sides are co-aligned (same
//! address modulo 16), a short head brings both to 16-byte alignment and whole 64-byte blocks
//! move with `ldp`/`stp` of four register pairs ([`copy_blocks`]); everything else, and a
//! whole copy whose sides are not co-aligned, goes the VMs' memcpy way: aligned loads and
//! stores only, each destination word shifted together from two aligned source words. Under
//! QEMU (`-cpu max`) unaligned accesses go through a slow helper (FEAT_LSE2's rules), and
//! `read_unaligned` on this target (strict alignment) is eight byte loads: the copies out of
//! and into a NIC's buffers, never co-aligned with a guest's, spent 15 % of the driver
//! domain's samples host -> guest in such a loop until the shifted words took it over. Callers
//! that pick where a private copy lands (a front-end's received frame:
//! [`SharedMem::read_into_reused`]) still place it co-aligned, for the blocks.

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
    /// Copies `len` bytes at `offset` into `buf`, a private buffer reused from frame to frame
    /// (a front-end's received frame), at the first place in it co-aligned with the shared
    /// bytes (same address modulo 16, fewer than 16 bytes in), so the copy takes the bulk
    /// path; returns that place: the frame is `buf[start..start + len]`. The buffer only
    /// ever grows (zero-filled when it does), so a frame no longer than the largest before
    /// costs the copy alone, no allocation and no clearing pass; its bytes outside the frame
    /// are left as they were. Panics if the range is outside the run.
    pub fn read_into_reused(&self, offset: usize, len: usize, buf: &mut Vec<u8>) -> usize {
        assert!(offset <= self.len && len <= self.len - offset);
        // Room for the frame at any of the 16 placements, before taking the address (growing
        // may move the buffer).
        let room = len + BULK_ALIGN - 1;
        if buf.len() < room {
            buf.resize(room, 0);
        }
        let start = (self.base + offset).wrapping_sub(buf.as_ptr() as usize) % BULK_ALIGN;
        self.read(offset, &mut buf[start..start + len]);
        start
    }

    /// Copies `len` bytes at `offset` of this run to `dst_offset` of `dst`, memory to memory
    /// (a back-end moving a frame from one guest's pool to another's), each source byte
    /// loaded once (see [`copy`]). Panics if either range is outside its run.
    pub fn copy_to(&self, offset: usize, dst: &SharedMem, dst_offset: usize, len: usize) {
        assert!(offset <= self.len && len <= self.len - offset);
        assert!(dst_offset <= dst.len && len <= dst.len - dst_offset);
        // SAFETY: both ranges are inside their runs (asserted above), which the constructors
        // keep in memory no Rust reference points into (see `words`). Two runs may be the same
        // memory and the ranges overlap (a guest's chain names what it likes in its pool):
        // that only scrambles the bytes copied, as `copy` allows.
        unsafe { copy(self.base + offset, dst.base + dst_offset, len) };
    }
}

/// Bytes this VM's shared-memory copies moved, for its closing lines: in co-aligned 64-byte
/// blocks (the bulk path) and the rest (heads, tails, short copies, and whole copies whose
/// sides are not co-aligned, word by word with aligned loads). A data path whose copies are
/// placed co-aligned shows nearly all its bytes as bulk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCounters {
    pub bulk_bytes: u64,
    pub word_bytes: u64,
}

static BULK_BYTES: AtomicU64 = AtomicU64::new(0);
static WORD_BYTES: AtomicU64 = AtomicU64::new(0);

/// What every `SharedMem` copy of this VM moved so far.
pub fn copy_counters() -> CopyCounters {
    CopyCounters {
        bulk_bytes: BULK_BYTES.load(Ordering::Relaxed),
        word_bytes: WORD_BYTES.load(Ordering::Relaxed),
    }
}

/// Counts one copy of `len` bytes of which `bulk` went in blocks.
fn count_copy(len: usize, bulk: usize) {
    if bulk > 0 {
        BULK_BYTES.fetch_add(bulk as u64, Ordering::Relaxed);
    }
    if len > bulk {
        WORD_BYTES.fetch_add((len - bulk) as u64, Ordering::Relaxed);
    }
}

/// Bytes one bulk step moves: four pairs of 64-bit registers.
const BULK_BLOCK: usize = 64;
/// The alignment both sides of a bulk copy need (16: a register pair's access never
/// straddles a 16-byte boundary, which under QEMU on LSE2 CPUs would take the slow path).
const BULK_ALIGN: usize = 16;

/// How a copy of `len` bytes from address `src` to address `dst` splits: `head` bytes until
/// both are 16-aligned, then `bulk` bytes (whole 64-byte blocks) for [`copy_blocks`]; the rest
/// after them is the tail. `(0, 0)`, no blocks, when the two are not co-aligned or no whole
/// block follows the head.
fn bulk_split(src: usize, dst: usize, len: usize) -> (usize, usize) {
    if !(src ^ dst).is_multiple_of(BULK_ALIGN) {
        return (0, 0);
    }
    let head = src.wrapping_neg() % BULK_ALIGN;
    if len < head + BULK_BLOCK {
        return (0, 0);
    }
    (head, (len - head) / BULK_BLOCK * BULK_BLOCK)
}

/// Copies `blocks` 64-byte blocks from address `src` to address `dst`, loading each source
/// byte exactly once, with `ldp`/`stp` of four pairs of x registers per block: the VMs' own
/// memcpy's bulk loop (`arch::memcpy::aligned_words`), one loop for private and shared copies.
///
/// Why plain `ldp`/`stp` on shared memory is sound here: no Rust reference to the shared side
/// is ever formed (only raw addresses go into the assembly), so the peer writing it meanwhile
/// breaks no aliasing rule; the assembly is opaque to the compiler, which can neither repeat
/// nor drop its loads (it is not `pure`, so it is assumed to read and write memory), so each
/// byte is read once into registers and stored once; and a racing peer can only change which
/// bytes are copied (a torn block is just some bytes), which the caller validates on its
/// private copy afterwards, never on the shared one. Normal, cacheable memory on both sides,
/// so ordering against the rings is the callers' acquire/release.
///
/// # Safety
/// Both addresses 16-aligned; both ranges of `blocks * 64` bytes valid (mapped, the
/// destination writable); any Rust reference into them is a private buffer the caller holds
/// exclusively (`&mut` for the destination), which then overlaps nothing else. Two shared
/// ranges may overlap (a hostile guest's chain can name anything in its pool): raw loads and
/// stores then copy unspecified bytes, no worse than a racing peer.
unsafe fn copy_blocks(src: usize, dst: usize, blocks: usize) {
    // SAFETY: the caller's contract is `aligned_words`' for `blocks * 8` words (both ranges
    // valid and 8-aligned, 16 here), with overlapping shared ranges allowed as it documents.
    unsafe { crate::arch::memcpy::aligned_words(dst, src, blocks * BULK_BLOCK / 8) }
}

/// Copies `len` bytes from address `src` to address `dst`, each source byte loaded once: where
/// the two are co-aligned ([`bulk_split`]), a head brings both to 16-byte alignment and whole
/// 64-byte blocks go by [`copy_blocks`]; everything else (head, tail, a copy whose sides are
/// not co-aligned) goes the VMs' memcpy way, aligned loads and stores with each destination
/// word shifted together from two aligned source words (`arch::memcpy::copy_raw`).
///
/// # Safety
/// Both ranges valid (the destination writable) and each either shared memory `SharedMem`'s
/// constructors vouch for or a private buffer the caller holds (exclusively, for the
/// destination), which then overlaps nothing else. Two shared ranges may overlap (a hostile
/// guest's chain can name anything in its pool): raw loads and stores then copy unspecified
/// bytes, no worse than a racing peer.
unsafe fn copy(src: usize, dst: usize, len: usize) {
    let (head, bulk) = bulk_split(src, dst, len);
    count_copy(len, bulk);
    let done = head + bulk;
    // SAFETY: the caller's contract; `head + bulk <= len` (`bulk_split`), so the three parts
    // are inside both ranges, and `bulk_split` made both block addresses 16-aligned and
    // `bulk` whole blocks (zero when the sides are not co-aligned: the last part is all).
    // Empty parts are skipped: each is an out-of-line call, and most copies (the headers, the
    // ones not co-aligned) have one part only.
    unsafe {
        if head > 0 {
            crate::arch::memcpy::copy_raw(dst, src, head);
        }
        if bulk > 0 {
            copy_blocks(src + head, dst + head, bulk / BULK_BLOCK);
        }
        if done < len {
            crate::arch::memcpy::copy_raw(dst + done, src + done, len - done);
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

    /// Each shared byte is loaded once (the caller checks the private copy, never the shared
    /// bytes again). Panics if the range is outside the run (a caller bug: ranges from a peer
    /// are checked before they get here).
    fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset <= self.len && dst.len() <= self.len - offset);
        // SAFETY: the source is inside the run (asserted above), which the constructors keep
        // in memory no Rust reference points into (see `words`); the destination is our
        // exclusive private slice, which never overlaps shared memory.
        unsafe { copy(self.base + offset, dst.as_mut_ptr() as usize, dst.len()) };
    }

    /// Panics if the range is outside the run.
    fn write(&self, offset: usize, src: &[u8]) {
        assert!(offset <= self.len && src.len() <= self.len - offset);
        // SAFETY: as in `read`, the other way: `src` is a private slice we read, the
        // destination inside the run.
        unsafe { copy(src.as_ptr() as usize, self.base + offset, src.len()) };
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

    /// Lengths around the bulk path's edges: below, at and past one and two 64-byte blocks,
    /// with every head (0-15) and tail left over.
    const LENGTHS: [usize; 25] = [
        0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 79, 80, 81, 127, 128, 129, 143, 191,
        192, 193, 300,
    ];

    #[test]
    fn the_bulk_split_is_whole_aligned_blocks_inside_the_range_or_nothing() {
        for src in 0..48usize {
            for dst in 0..48usize {
                for len in (0..400).chain([4096, 65536 + 7]) {
                    let (head, bulk) = bulk_split(0x1000 + src, 0x9000 + dst, len);
                    if (src ^ dst) % 16 != 0 || len < (16 - src % 16) % 16 + 64 {
                        assert_eq!((head, bulk), (0, 0), "{src} {dst} {len}");
                        continue;
                    }
                    assert!(head < 16 && (src + head) % 16 == 0 && (dst + head) % 16 == 0);
                    assert!(bulk >= 64 && bulk % 64 == 0 && head + bulk <= len);
                    assert!(
                        len - head - bulk < 64,
                        "a whole block left: {src} {dst} {len}"
                    );
                }
            }
        }
        // The edges: one block needs 64 bytes after the head.
        assert_eq!(bulk_split(0, 0, 63), (0, 0));
        assert_eq!(bulk_split(0, 0, 64), (0, 64));
        assert_eq!(bulk_split(0, 0, 127), (0, 64));
        assert_eq!(bulk_split(0, 0, 128), (0, 128));
        assert_eq!(bulk_split(12, 28, 67), (0, 0));
        assert_eq!(bulk_split(12, 28, 68), (4, 64));
        assert_eq!(bulk_split(12, 28, 131), (4, 64));
        assert_eq!(bulk_split(12, 28, 132), (4, 128));
        assert_eq!(bulk_split(12, 20, 4096), (0, 0), "8 apart: not co-aligned");
    }

    #[test]
    fn reads_and_writes_copy_exactly_the_range_at_every_alignment() {
        // Every shared alignment against every private one, so both the bulk path (co-aligned)
        // and the slow one run, with every head and tail.
        for offset in 0..16 {
            for private in 0..16 {
                for len in LENGTHS {
                    let mut backing = vec![0u64; 64];
                    let mem = over(&mut backing);
                    let mut staging = vec![0u64; 48];
                    let staged: &mut [u8] = bytes_of(&mut staging);
                    let data = pattern(len, (offset * 16 + private) as u8);
                    staged[private..private + len].copy_from_slice(&data);
                    mem.write(offset, &staged[private..private + len]);
                    let bytes: Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
                    let what = format!("offset {offset} private {private} len {len}");
                    assert!(bytes[..offset].iter().all(|&b| b == 0), "{what}");
                    assert_eq!(&bytes[offset..offset + len], &data[..], "{what}");
                    assert!(bytes[offset + len..].iter().all(|&b| b == 0), "{what}");
                    // Back out, into a private buffer with guard bytes around the range.
                    let mut out = vec![0u64; 48];
                    let out: &mut [u8] = bytes_of(&mut out);
                    out.fill(0xee);
                    mem.read(offset, &mut out[private..private + len]);
                    assert_eq!(&out[private..private + len], &data[..], "{what}");
                    assert!(out[..private].iter().all(|&b| b == 0xee), "{what}");
                    assert!(out[private + len..].iter().all(|&b| b == 0xee), "{what}");
                }
            }
        }
    }

    /// A `u64` buffer's bytes (8-aligned, so offsets in it are alignments).
    fn bytes_of(words: &mut [u64]) -> &mut [u8] {
        let len = words.len() * 8;
        // SAFETY: the same memory, `u8` has no alignment or validity requirement, and the
        // borrow of `words` is handed on.
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) }
    }

    #[test]
    fn the_copy_counters_split_each_copy_into_its_bulk_and_slow_bytes() {
        let mut a = vec![0u64; 64];
        let mut b = vec![0u64; 64];
        let (a, b) = (over(&mut a), over(&mut b));
        // A co-aligned copy of 200 bytes: a head under 16, then at least two blocks.
        let to = (a.gpa() as usize + 4).wrapping_sub(b.gpa() as usize) % 16;
        let (head, bulk) = bulk_split(a.gpa() as usize + 4, b.gpa() as usize + to, 200);
        assert!(head < 16 && bulk >= 128, "{head} {bulk}");
        // Other tests copy at the same time, so the counters grow by at least this copy.
        let before = copy_counters();
        a.copy_to(4, &b, to, 200);
        let after = copy_counters();
        assert!(after.bulk_bytes - before.bulk_bytes >= bulk as u64);
        assert!(after.word_bytes - before.word_bytes >= (200 - bulk) as u64);
        // Not co-aligned (the destination one byte further modulo 16): all 100 bytes slow.
        let before = copy_counters();
        a.copy_to(
            0,
            &b,
            (a.gpa() as usize + 1).wrapping_sub(b.gpa() as usize) % 16,
            100,
        );
        assert!(copy_counters().word_bytes - before.word_bytes >= 100);
    }

    #[test]
    fn copies_between_runs_move_exactly_the_range_at_every_alignment() {
        for from in 0..16 {
            for to in 0..16 {
                for len in LENGTHS {
                    let mut src_backing = vec![0u64; 64];
                    let mut dst_backing = vec![0u64; 64];
                    let src = over(&mut src_backing);
                    let dst = over(&mut dst_backing);
                    let data = pattern(len, 9 + from as u8);
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
    }

    proptest::proptest! {
        /// Frames of any lengths, one after another into one reused buffer: each read gives
        /// exactly its range, co-aligned with the shared bytes (so the bulk path runs), the
        /// buffer never shrinks, it grows only to the longest frame plus the 15 bytes of
        /// placement, and nothing outside the frame moves.
        #[test]
        fn reads_into_a_reused_buffer_give_exactly_each_frame_co_aligned(
            frames in proptest::collection::vec((0usize..300, 0usize..200), 1..12),
            start in 0usize..80,
        ) {
            let mut backing: Vec<u64> = (0..64u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
            let mem = over(&mut backing);
            let bytes: Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let mut buf = vec![0xaau8; start];
            let mut longest = start;
            for (offset, len) in frames {
                let before = buf.clone();
                let at = mem.read_into_reused(offset, len, &mut buf);
                proptest::prop_assert!(at < 16);
                proptest::prop_assert_eq!(
                    (buf.as_ptr() as usize + at) % 16,
                    (mem.gpa() as usize + offset) % 16
                );
                proptest::prop_assert_eq!(&buf[at..at + len], &bytes[offset..offset + len]);
                longest = longest.max(len + 15);
                proptest::prop_assert_eq!(buf.len(), longest);
                // Outside the frame: what was there, or zeros where the buffer grew.
                for (i, &b) in buf.iter().enumerate() {
                    if !(at..at + len).contains(&i) {
                        proptest::prop_assert_eq!(b, before.get(i).copied().unwrap_or(0));
                    }
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
