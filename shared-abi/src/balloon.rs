//! The memory balloon: how a running VM gives pages of its memory back to the hypervisor and
//! how another asks for them (the lecture's balloon; Xen's decrease_reservation and
//! populate_physmap, with virtio-balloon's batching).
//!
//! This module owns the ABI's constants; the hypercalls are in
//! [`hypercall`](crate::hypercall) (`BALLOON_RELEASE`, `BALLOON_POPULATE`, `BALLOON_INFO`), the
//! rules in the hypervisor (`hypervisor/src/balloon.rs`).
//!
//! # Memory a VM may have
//!
//! A VM's memory lives in its memory window, [`WINDOW`]: its RAM from the topology at the bottom
//! (`GUEST_RAM_BASE ..+ ram_bytes`), and any page above it or in a hole it gave back that the
//! balloon populates. Guests map the whole window as Normal memory at stage 1 already (it is
//! the first Normal gigabyte), so a populated page is usable at once.
//!
//! # Giving back (inflate)
//!
//! `BALLOON_RELEASE(x1 = array GPA, x2 = count)`: the array holds `count` (`1..=`[`MAX_BATCH`])
//! little-endian `u64` GPAs of pages the caller gives back; it lies 8-byte aligned in the
//! caller's RAM. The hypervisor reads the whole array once, then takes each page in order: it
//! unmaps it from the caller's stage 2 (splitting a 2 MiB block with break-before-make),
//! invalidates the TLBs (and the SMMU's for a VM that owns a device), scrubs it, and adds it to
//! the balloon's credit. It stops at the first page it refuses; x0 is that page's status (`Ok`
//! when all were taken) and x1 how many pages were taken. A page is refused with
//! - `InvalidArgument`: not page aligned, outside the window, or not memory the caller has;
//! - `Busy`: the hypervisor or a peer uses it: the start-info page, the event page, a page of the
//!   grant table, a frame a peer maps through a grant;
//! - `Denied`: the caller would keep less than [`FLOOR_BYTES`].
//!
//! A page given back is gone: touching it is a stage-2 fault, and the VM is killed with a
//! reason naming the balloon. Hypercalls that name guest memory (grant tables, event pages, copy
//! buffers) refuse given-back pages and populated ones alike: only the VM's own RAM from the
//! topology, minus what it gave back, is memory the hypervisor reads or writes for it.
//!
//! # Asking for more (deflate)
//!
//! `BALLOON_POPULATE(x1 = array GPA, x2 = count)`: the array, as above, holds the GPAs where the
//! caller wants new pages: each page aligned, inside [`WINDOW`], and not mapped now (a hole it
//! gave back, or above its RAM). Each page populated is zeroed. Pages come only from the
//! balloon's credit, i.e. what VMs gave back (or what populated pages of a stopped VM returned):
//! the balloon moves memory between VMs, it never hands out the hypervisor's reserve. It stops at
//! the first page it cannot populate: `InvalidArgument` for a bad GPA, `NoSpace` when the credit
//! (or free memory) is exhausted, so a VM asking for more than is free gets what is free and
//! that status. x1 is how many pages were populated.
//!
//! `BALLOON_INFO`: x1 = the caller's memory now, in pages; x2 = the balloon's credit, in pages.
//!
//! # Stopping
//!
//! A VM that stops or restarts frees its memory as it stands: its RAM minus what it gave back
//! goes to the hypervisor's free memory, its populated pages back to the balloon's credit. A
//! restarted VM boots with its RAM from the topology, whole (in fresh frames if it had given
//! pages back).

use crate::layout::{GUEST_RAM_BASE, MAX_VM_RAM};

/// Most pages one BALLOON_RELEASE or BALLOON_POPULATE takes: one page of GPAs.
pub const MAX_BATCH: u64 = 512;

/// Memory a VM always keeps: BALLOON_RELEASE refuses (`Denied`) to go below it.
pub const FLOOR_BYTES: u64 = 4 << 20;

/// `[start, end)` of the guest-physical range a VM's memory may occupy.
pub const WINDOW: (u64, u64) = (GUEST_RAM_BASE, GUEST_RAM_BASE + MAX_VM_RAM);

const _: () = assert!(MAX_BATCH * 8 == crate::layout::PAGE_SIZE);
