//! Page-sized, page-aligned memory shared with the hypervisor or a peer VM, viewed as atomic
//! 64-bit words (the other side writes it concurrently, so plain references would be wrong).
//!
//! Pages handed to others are leaked on purpose: a grant or an event page must outlive every
//! mapping a peer or the hypervisor may hold, and a unikernel that re-grants pages reuses them
//! instead of freeing them.

use alloc::boxed::Box;
use core::sync::atomic::AtomicU64;

use shared_abi::layout::PAGE_SIZE;

/// Words in a 4 KiB page.
pub const PAGE_WORDS: usize = (PAGE_SIZE / 8) as usize;

/// One 4 KiB page of the VM's RAM.
#[repr(C, align(4096))]
pub struct Page(pub [AtomicU64; PAGE_WORDS]);

impl Page {
    /// A zeroed page from the heap that is never freed (see the module doc).
    pub fn leak() -> &'static Page {
        Box::leak(Box::new(Page([const { AtomicU64::new(0) }; PAGE_WORDS])))
    }

    /// `count` contiguous zeroed pages that are never freed.
    pub fn leak_many(count: usize) -> &'static [Page] {
        let pages: alloc::vec::Vec<Page> = (0..count)
            .map(|_| Page([const { AtomicU64::new(0) }; PAGE_WORDS]))
            .collect();
        alloc::vec::Vec::leak(pages)
    }

    /// The page's guest-physical address (VMs run with an identity map: VA = GPA).
    pub fn gpa(&self) -> u64 {
        self as *const Page as u64
    }

    pub fn words(&self) -> &[AtomicU64] {
        &self.0
    }
}
