//! The hypervisor's heap: a static region handed to the global allocator once at boot. It holds
//! VMs, vCPUs and the grant records guests create.

use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::LockedHeap;

pub const HEAP_SIZE: usize = 24 << 20;

#[repr(C, align(4096))]
struct HeapSpace([u8; HEAP_SIZE]);
static mut HEAP_SPACE: HeapSpace = HeapSpace([0; HEAP_SIZE]);
static INITIALISED: AtomicBool = AtomicBool::new(false);

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands the heap region to the allocator; later calls do nothing.
pub fn init() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the flag above lets this run once, so HEAP_SPACE is handed over exactly once and is
    // used by nothing but the allocator from then on.
    unsafe {
        HEAP.lock()
            .init(core::ptr::addr_of_mut!(HEAP_SPACE) as usize, HEAP_SIZE);
    }
}

/// Bytes of the heap not handed out (including the allocator's rounding).
pub fn free_bytes() -> usize {
    let heap = HEAP.lock();
    heap.stats_total_bytes()
        .saturating_sub(heap.stats_alloc_actual())
}
