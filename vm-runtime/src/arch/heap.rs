//! The global allocator: a buddy allocator over the RAM between the end of the image's .bss and
//! the start-info page, so `alloc` (Box, Vec, String, ...) works in every VM.
//!
//! The heap lock is not IRQ-safe: do not allocate in IRQ handlers.
//!
//! The balloon (`crate::balloon`) moves whole pages out of the heap and new ones in, through
//! the three `pub(crate)` functions at the end.

use core::alloc::Layout;

use buddy_system_allocator::LockedHeap;
use shared_abi::layout::PAGE_SIZE;

// Host tests keep the host's allocator.
#[cfg_attr(not(test), global_allocator)]
static HEAP: LockedHeap<32> = LockedHeap::new();

/// Hands `[start, end)` to the allocator. Called once, by the runtime on vCPU 0, before `main`.
pub(crate) fn init(start: usize, end: usize) {
    if end <= start {
        return;
    }
    // SAFETY: the runtime passes the RAM between the end of .bss and the start-info page: it is
    // mapped, belongs to this VM, and nothing else (image, stacks, start-info page) uses it. It
    // is added exactly once.
    unsafe { HEAP.lock().init(start, end - start) };
}

/// Heap statistics: (bytes requested by live allocations, bytes in the heap).
pub fn stats() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_alloc_user(), heap.stats_total_bytes())
}

/// Up to `max_pages` contiguous pages taken out of the heap for the balloon to give away: the
/// largest power-of-two run it can allocate, page aligned; `None` when not one page is free.
/// The run stays allocated for good: the heap never sees it again unless
/// [`put_back_pages`] returns it.
pub(crate) fn take_pages(max_pages: u64) -> Option<(u64, u64)> {
    if max_pages == 0 {
        return None;
    }
    let mut heap = HEAP.lock();
    let largest = 1u64 << (63 - max_pages.leading_zeros());
    let mut pages = largest;
    while pages > 0 {
        let layout =
            Layout::from_size_align((pages * PAGE_SIZE) as usize, PAGE_SIZE as usize).ok()?;
        if let Ok(block) = heap.alloc(layout) {
            return Some((block.as_ptr() as u64, pages));
        }
        pages /= 2;
    }
    None
}

/// Returns pages [`take_pages`] handed out that the hypervisor refused to take.
pub(crate) fn put_back_pages(gpa: u64, pages: u64) {
    if pages == 0 {
        return;
    }
    let (start, end) = (gpa as usize, (gpa + pages * PAGE_SIZE) as usize);
    // SAFETY: the balloon, the only caller, passes part of a run `take_pages` allocated and
    // the hypervisor refused: it is still mapped and ours, and no reference points into it
    // (the allocation was never handed to other code). It was allocated, so it is not among the
    // heap's free blocks, and it is added once. The heap then counts it as allocated and as
    // added both, which only skews `stats`.
    unsafe { HEAP.lock().add_to_heap(start, end) };
}

/// Adds pages the hypervisor populated for us (BALLOON_POPULATE) to the heap.
pub(crate) fn add_populated_pages(gpa: u64, pages: u64) {
    if pages == 0 {
        return;
    }
    let (start, end) = (gpa as usize, (gpa + pages * PAGE_SIZE) as usize);
    // SAFETY: the balloon, the only caller, passes a run the hypervisor just populated above
    // our RAM (or above earlier populated pages): zeroed, mapped at stage 2, Normal memory at
    // stage 1 (the boot map covers the whole memory window), and never added before, since
    // the balloon's top only grows.
    unsafe { HEAP.lock().add_to_heap(start, end) };
}
