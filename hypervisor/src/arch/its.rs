//! The physical ITS's register frame and its command queue's memory: the raw accesses behind
//! `hypervisor::its::bringup::ItsHw`. What is written, in which order, and how long to wait is
//! the library's; this module only reaches the device.

use core::arch::asm;
use core::ptr;

use hypervisor::its::bringup::ItsHw;
use hypervisor::its::{Command, GITS_CBASER, ITS_REGISTER_SPACE};

/// The ITS at `base` (control frame and translation frame, identity-mapped Device memory).
pub struct ItsMmio {
    base: usize,
    /// The command queue as GITS_CBASER was last written: (physical address, bytes).
    queue: Option<(u64, u64)>,
}

impl ItsMmio {
    /// # Safety
    /// `base` must be the register frames of the ITS named by the device tree, in the EL2
    /// identity map's Device region, and no other `ItsMmio` may exist for it.
    pub const unsafe fn new(base: u64) -> ItsMmio {
        ItsMmio {
            base: base as usize,
            queue: None,
        }
    }

    /// The address of the register at `offset`, if it is an aligned one inside the frames.
    /// Offsets are the library's constants, so `None` is a bug in this hypervisor; it runs
    /// after boot too (VM start, stop, vCPU moves), so it is an error, not a panic: a read
    /// gives all ones (which no CREADR check accepts), a write is dropped.
    fn reg(&self, offset: usize, width: usize) -> Option<usize> {
        (offset + width <= ITS_REGISTER_SPACE && offset.is_multiple_of(width))
            .then_some(self.base + offset)
    }
}

/// Makes earlier normal-memory writes (commands, zeroed tables) visible to the ITS before the
/// register write that follows.
fn publish() {
    // SAFETY: a barrier; no memory is accessed.
    unsafe { asm!("dsb st", options(nostack, preserves_flags)) };
}

impl ItsHw for ItsMmio {
    fn read32(&mut self, offset: usize) -> u32 {
        let Some(addr) = self.reg(offset, 4) else {
            return u32::MAX;
        };
        // SAFETY: an aligned register inside the ITS frames (checked by `reg`); volatile is how
        // MMIO is read.
        unsafe { ptr::read_volatile(addr as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let Some(addr) = self.reg(offset, 4) else {
            return;
        };
        publish();
        // SAFETY: as in `read32`.
        unsafe { ptr::write_volatile(addr as *mut u32, value) }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        let Some(addr) = self.reg(offset, 8) else {
            return u64::MAX;
        };
        // SAFETY: as in `read32`; the 64-bit registers take 64-bit accesses.
        unsafe { ptr::read_volatile(addr as *const u64) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let Some(addr) = self.reg(offset, 8) else {
            return;
        };
        if offset == GITS_CBASER {
            // Size [7:0] is 4 KiB pages - 1, Physical_Address [51:12].
            let pa = value & 0x000f_ffff_ffff_f000;
            self.queue = Some((pa, ((value & 0xff) + 1) * 0x1000));
        }
        publish();
        // SAFETY: as in `read64`.
        unsafe { ptr::write_volatile(addr as *mut u64, value) }
    }

    fn store_command(&mut self, offset: u64, command: &Command) -> bool {
        let Some((pa, bytes)) = self.queue else {
            return false;
        };
        if !offset.is_multiple_of(32) || offset + 32 > bytes {
            return false;
        }
        let slot = (pa + offset) as *mut u64;
        for (i, word) in command.iter().enumerate() {
            // SAFETY: the queue is frames the hypervisor allocated for it (the bring-up's
            // allocator) and gave to the ITS through GITS_CBASER, identity-mapped RAM that
            // nothing else writes; `offset` is a 32-byte slot inside it (checked above).
            unsafe { ptr::write_volatile(slot.add(i), word.to_le()) };
        }
        true
    }
}

/// Writes one byte of an LPI configuration table: `pa` must be inside a table of frames the
/// hypervisor allocated for the GIC (identity-mapped RAM no VM can reach).
pub fn write_table_byte(pa: u64, byte: u8) {
    // SAFETY: per the contract above: hypervisor-owned, identity-mapped RAM; a volatile write
    // because the GIC reads it behind the compiler's back.
    unsafe { ptr::write_volatile(pa as *mut u8, byte) };
}
