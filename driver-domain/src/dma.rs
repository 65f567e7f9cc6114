//! DMA for the passed-through NIC: the `virtio-drivers` HAL. The device's DMA addresses are this
//! VM's guest-physical addresses (the SMMU translates them with our stage-2 table), and VM RAM
//! is identity-mapped at stage 1, so an address is simply the pointer value: no bounce buffers.
//!
//! The test hook [`arm_rogue_rx`] makes the next receive buffer handed to the device point at an
//! address of the caller's choosing, which is how the driver domain plays a compromised or buggy
//! driver that aims the NIC's DMA at memory it does not own; the SMMU must refuse it.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// A rogue DMA address for the next device-writable buffer (0: none).
static ROGUE_RX: AtomicU64 = AtomicU64::new(0);

/// Makes the next buffer shared for the device to write into use `iova` instead of its real
/// address (test only: the device's writes then target `iova`).
pub fn arm_rogue_rx(iova: u64) {
    ROGUE_RX.store(iova, Ordering::Relaxed);
}

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("page-sized layout")
}

/// The HAL `virtio-drivers` uses to reach memory and device registers.
pub struct DmaHal;

// SAFETY: allocations are page-aligned, zeroed heap memory that stays allocated until
// `dma_dealloc`; every address returned is the identity-mapped guest-physical address of the
// memory, which is what the device (through the SMMU) must use.
unsafe impl Hal for DmaHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (virtio-drivers never asks for 0 pages).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout(pages)) };
        let ptr = NonNull::new(ptr).expect("out of memory for NIC DMA");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count (the trait's contract).
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // The BAR window is identity-mapped (as Device memory) like everything outside RAM.
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        if direction == BufferDirection::DeviceToDriver {
            let rogue = ROGUE_RX.swap(0, Ordering::Relaxed);
            if rogue != 0 {
                return rogue;
            }
        }
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
