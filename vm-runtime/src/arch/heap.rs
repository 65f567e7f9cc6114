//! The global allocator: a buddy allocator over the RAM between the end of the image's .bss and
//! the start-info page, so `alloc` (Box, Vec, String, ...) works in every VM.
//!
//! The heap lock is not IRQ-safe: do not allocate in IRQ handlers.

use buddy_system_allocator::LockedHeap;

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
