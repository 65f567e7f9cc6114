//! I/O requests: how the hypervisor forwards a guest's trapped MMIO access to a device model in
//! another VM and gets the answer back (Xen's IOREQ servers, reduced to what sluice needs).
//!
//! This module owns the request page's layout and the state machine of its slots, as pure
//! operations on the page's words that both sides call. Who may answer, and when a guest is
//! blocked or resumed, is the hypervisor's (`hypervisor/src/ioreq.rs`).
//!
//! # Roles
//!
//! A guest with an emulated device (`nic = "emulated"` in the topology) has no stage-2 mapping
//! at [`EMULATED_NIC_IPA`](crate::layout::EMULATED_NIC_IPA). Each access there is a stage-2
//! data abort; the hypervisor decodes it from the syndrome, posts it as a request in the slot of
//! the faulting vCPU, marks the device model's request port pending and blocks that vCPU. The
//! device model (the guest's back-end VM) takes the request, emulates the register, writes the
//! answer and signals its request port with EVTCHN_SEND; the hypervisor then takes the answer,
//! writes the loaded value into the guest's register and resumes the vCPU past the instruction.
//! The hypervisor moves requests; it never emulates the device.
//!
//! - The page is a hypervisor-owned frame mapped read-write into the device model only, at
//!   [`control_page_ipa`](crate::layout::control_page_ipa)`(guest id)`: where a para-virtual
//!   guest's control page would be. The guest never sees it.
//! - The device model's request port is its port of the connection: `CONNECTION_PORT(guest id)`.
//!   It is bound to the hypervisor, not to the guest, so the guest cannot signal it.
//! - The device's interrupt is the SPI [`EMULATED_NIC`](crate::layout::intid::EMULATED_NIC),
//!   raised in the guest by the device model with `IOREQ_SET_IRQ` (at most one copy pending).
//!
//! # Page layout (little-endian `u64` words)
//!
//! | word         | field                                                             |
//! |-------------:|-------------------------------------------------------------------|
//! |            0 | [`MAGIC`] (low 32 bits) and [`VERSION`] (high 32 bits)            |
//! |            1 | slot count, [`SLOTS`]                                             |
//! |            2 | guest epoch: how many times the guest stopped (hypervisor writes) |
//! |            3 | guest state: [`GUEST_RUNNING`] or [`GUEST_GONE`] (hypervisor writes) |
//! | `8 + 4 * i`  | slot `i` (vCPU `i` of the guest): state                           |
//! | `9 + 4 * i`  | offset of the access inside the device window                     |
//! | `10 + 4 * i` | data: the value a write stores, or the answer to a read           |
//! | `11 + 4 * i` | access: size in bytes (bits 0..8: 1, 2, 4 or 8), bit 8 set for a write |
//!
//! # Slot states
//!
//! `NONE → READY` (hypervisor posts) `→ IN_PROCESS` (device model takes) `→ RESPONSE_READY`
//! (device model answers) `→ NONE` (hypervisor takes the answer). The state word is written
//! last with release ordering and read first with acquire ordering, so the other fields are
//! complete when the state says so. Every field is read once.
//!
//! The hypervisor trusts nothing in the page: the device model can write any word at any time.
//! It knows which slots have a request outstanding from its own records, takes an answer only
//! from such a slot, ignores anything else, and reads the data word once. A stray
//! `RESPONSE_READY` is simply not an answer to anything.
//!
//! # The guest's life
//!
//! A device model must know when its guest goes away, as a real device sees its bus reset: the
//! hypervisor counts every stop of the guest in the epoch word (a SYSTEM_RESET, a kill, a
//! power-off) and sets the state word to [`GUEST_GONE`] when the guest will not come back, then
//! signals the request port. The device model reads both words once per look
//! ([`guest_status`]): a new epoch means the guest it served is gone, so the device goes back to
//! its power-on state (a restarted guest finds a fresh device, not the old one's FIFOs);
//! `GUEST_GONE` means it can stop serving. The hypervisor only ever writes these two words
//! (it increments the epoch from its own count, never from what the page holds), so a device
//! model that scribbles on them misleads only itself.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::MAX_VCPUS_PER_VM;

/// `"IORQ"` little-endian, in the low half of word 0.
pub const MAGIC: u32 = u32::from_le_bytes(*b"IORQ");
/// Version 2 added the guest's epoch and state (words 2 and 3).
pub const VERSION: u32 = 2;
/// One slot per vCPU of the guest.
pub const SLOTS: usize = MAX_VCPUS_PER_VM as usize;
/// Words of the guest's epoch and state.
const GUEST_EPOCH: usize = 2;
const GUEST_STATE: usize = 3;
/// Guest states (word 3).
pub const GUEST_RUNNING: u64 = 0;
pub const GUEST_GONE: u64 = 1;
/// Word index of slot 0 and words per slot.
const SLOT_BASE: usize = 8;
const SLOT_WORDS: usize = 4;
/// `u64` words of the page the helpers use.
pub const PAGE_WORDS: usize = SLOT_BASE + SLOTS * SLOT_WORDS;

const _: () = assert!(PAGE_WORDS * 8 <= crate::layout::PAGE_SIZE as usize);

/// Slot states (the state word's values).
pub const STATE_NONE: u64 = 0;
pub const STATE_READY: u64 = 1;
pub const STATE_IN_PROCESS: u64 = 2;
pub const STATE_RESPONSE_READY: u64 = 3;

const WRITE_BIT: u64 = 1 << 8;

/// One access of the guest, as posted in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Offset of the access inside the device's window.
    pub offset: u64,
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// The value stored, truncated to `size` bytes (0 for a read).
    pub data: u64,
}

/// Why a page operation did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoreqError {
    #[error("request page is {words} words, need {PAGE_WORDS}")]
    PageTooShort { words: usize },
    #[error("request slot {slot} does not exist (the page has {SLOTS})")]
    NoSuchSlot { slot: usize },
    #[error("request page has a bad header (magic {magic:#x}, version {version})")]
    BadHeader { magic: u32, version: u32 },
    #[error("access size {size} is not 1, 2, 4 or 8 bytes")]
    BadSize { size: u8 },
}

fn slot_words(page: &[AtomicU64], slot: usize) -> Result<&[AtomicU64], IoreqError> {
    if page.len() < PAGE_WORDS {
        return Err(IoreqError::PageTooShort { words: page.len() });
    }
    if slot >= SLOTS {
        return Err(IoreqError::NoSuchSlot { slot });
    }
    let start = SLOT_BASE + slot * SLOT_WORDS;
    Ok(&page[start..start + SLOT_WORDS])
}

fn size_ok(size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
}

/// Keeps the low `size` bytes of `value`.
pub const fn truncate(value: u64, size: u8) -> u64 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// The guest's life as the page tells it (see "The guest's life").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStatus {
    /// How many times the guest has stopped since the page was made.
    pub epoch: u64,
    /// The guest stopped for good.
    pub gone: bool,
}

/// Hypervisor side: the guest stopped for the `epoch`-th time (the hypervisor's own count),
/// `for_good` unless it is restarting. Written before the request port is signalled.
pub fn record_guest_stop(page: &[AtomicU64], epoch: u64, for_good: bool) -> Result<(), IoreqError> {
    if page.len() < PAGE_WORDS {
        return Err(IoreqError::PageTooShort { words: page.len() });
    }
    let state = if for_good { GUEST_GONE } else { GUEST_RUNNING };
    page[GUEST_STATE].store(state, Ordering::Relaxed);
    page[GUEST_EPOCH].store(epoch, Ordering::Release);
    Ok(())
}

/// Device-model side: the guest's epoch and state, each word read once.
pub fn guest_status(page: &[AtomicU64]) -> Result<GuestStatus, IoreqError> {
    if page.len() < PAGE_WORDS {
        return Err(IoreqError::PageTooShort { words: page.len() });
    }
    let epoch = page[GUEST_EPOCH].load(Ordering::Acquire);
    let gone = page[GUEST_STATE].load(Ordering::Relaxed) == GUEST_GONE;
    Ok(GuestStatus { epoch, gone })
}

/// Hypervisor side: writes the header and empties every slot. The guest's epoch and state
/// are left as they are (a fresh page is all zeros: epoch 0, running).
pub fn init_page(page: &[AtomicU64]) -> Result<(), IoreqError> {
    if page.len() < PAGE_WORDS {
        return Err(IoreqError::PageTooShort { words: page.len() });
    }
    page[0].store(
        u64::from(MAGIC) | (u64::from(VERSION) << 32),
        Ordering::Relaxed,
    );
    page[1].store(SLOTS as u64, Ordering::Relaxed);
    for slot in 0..SLOTS {
        reset_slot(page, slot)?;
    }
    Ok(())
}

/// Device-model side: checks that `page` is a request page this build understands.
pub fn check_header(page: &[AtomicU64]) -> Result<(), IoreqError> {
    if page.len() < PAGE_WORDS {
        return Err(IoreqError::PageTooShort { words: page.len() });
    }
    let word = page[0].load(Ordering::Acquire);
    let (magic, version) = (word as u32, (word >> 32) as u32);
    if magic != MAGIC || version != VERSION || page[1].load(Ordering::Relaxed) != SLOTS as u64 {
        return Err(IoreqError::BadHeader { magic, version });
    }
    Ok(())
}

/// Hypervisor side: posts `request` in `slot` and marks it READY. The hypervisor posts only
/// into a slot with no request outstanding (its own record says so); whatever the device model
/// left in the slot is overwritten.
pub fn post(page: &[AtomicU64], slot: usize, request: Request) -> Result<(), IoreqError> {
    if !size_ok(request.size) {
        return Err(IoreqError::BadSize { size: request.size });
    }
    let words = slot_words(page, slot)?;
    words[1].store(request.offset, Ordering::Relaxed);
    words[2].store(truncate(request.data, request.size), Ordering::Relaxed);
    let access = u64::from(request.size) | if request.write { WRITE_BIT } else { 0 };
    words[3].store(access, Ordering::Relaxed);
    words[0].store(STATE_READY, Ordering::Release);
    Ok(())
}

/// Hypervisor side: the answer in `slot` if the device model has given one (the slot is then
/// empty again), `None` if the slot is in any other state. Reads the state word once and the
/// data word once; a read's answer is truncated to the access size by the caller, which knows
/// the size from its own record.
pub fn take_response(page: &[AtomicU64], slot: usize) -> Result<Option<u64>, IoreqError> {
    let words = slot_words(page, slot)?;
    if words[0].load(Ordering::Acquire) != STATE_RESPONSE_READY {
        return Ok(None);
    }
    let data = words[2].load(Ordering::Relaxed);
    words[0].store(STATE_NONE, Ordering::Relaxed);
    Ok(Some(data))
}

/// Hypervisor side: empties `slot` (its request was abandoned: the guest stopped, or the
/// answer was given without the device model).
pub fn reset_slot(page: &[AtomicU64], slot: usize) -> Result<(), IoreqError> {
    let words = slot_words(page, slot)?;
    for word in &words[1..] {
        word.store(0, Ordering::Relaxed);
    }
    words[0].store(STATE_NONE, Ordering::Release);
    Ok(())
}

/// Device-model side: takes the request waiting in `slot`, if any, and marks the slot
/// IN_PROCESS. Each field is read once.
pub fn take_request(page: &[AtomicU64], slot: usize) -> Result<Option<Request>, IoreqError> {
    let words = slot_words(page, slot)?;
    if words[0]
        .compare_exchange(
            STATE_READY,
            STATE_IN_PROCESS,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return Ok(None);
    }
    let offset = words[1].load(Ordering::Relaxed);
    let data = words[2].load(Ordering::Relaxed);
    let access = words[3].load(Ordering::Relaxed);
    let size = (access & 0xff) as u8;
    if !size_ok(size) {
        return Err(IoreqError::BadSize { size });
    }
    Ok(Some(Request {
        offset,
        size,
        write: access & WRITE_BIT != 0,
        data: truncate(data, size),
    }))
}

/// Device-model side: answers the request it took from `slot` (`data` is ignored by the
/// hypervisor for a write) and marks the slot RESPONSE_READY. Signal the request port after.
pub fn respond(page: &[AtomicU64], slot: usize, data: u64) -> Result<(), IoreqError> {
    let words = slot_words(page, slot)?;
    words[2].store(data, Ordering::Relaxed);
    words[0].store(STATE_RESPONSE_READY, Ordering::Release);
    Ok(())
}

#[cfg(test)]
mod tests;
