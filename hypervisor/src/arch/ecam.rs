//! The host's PCI ECAM: raw configuration-space accesses, which the hypervisor performs for the
//! decisions of `hypervisor::pci::ConfigFilter` (and for its probe).
//!
//! The ECAM is reached through the EL2 identity map (QEMU virt's high ECAM at 0x40_1000_0000 lies
//! in the Device-memory blocks from 256 GiB). Accesses that PCI does not allow (sizes other than
//! 1, 2, 4 or misaligned) are refused here too: reads return all ones, writes are dropped.

use core::ptr;

use hypervisor::pci::{self, Bdf, ConfigAccess};

/// The host ECAM region (256 buses).
pub struct Ecam {
    base: usize,
}

impl Ecam {
    /// # Safety
    /// `base` must be the ECAM of the PCI host bridge from the device tree, covering 256 buses,
    /// mapped as Device memory by the EL2 identity map.
    pub const unsafe fn new(base: u64) -> Ecam {
        Ecam {
            base: base as usize,
        }
    }

    /// Reads `size` bytes at register `reg` of `bdf`.
    pub fn read(&self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        if !pci::access_valid(reg, size) {
            return pci::all_ones(size);
        }
        let addr = self.base + bdf.ecam_offset() as usize + reg as usize;
        // SAFETY: the address is inside the ECAM (bdf and reg are in range by construction and
        // access_valid), naturally aligned for `size`, and volatile is how MMIO is read.
        unsafe {
            match size {
                1 => ptr::read_volatile(addr as *const u8) as u32,
                2 => ptr::read_volatile(addr as *const u16) as u32,
                _ => ptr::read_volatile(addr as *const u32),
            }
        }
    }

    /// Writes `size` bytes of `value` at register `reg` of `bdf`.
    pub fn write(&self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        if !pci::access_valid(reg, size) {
            return;
        }
        let addr = self.base + bdf.ecam_offset() as usize + reg as usize;
        // SAFETY: as in read.
        unsafe {
            match size {
                1 => ptr::write_volatile(addr as *mut u8, value as u8),
                2 => ptr::write_volatile(addr as *mut u16, value as u16),
                _ => ptr::write_volatile(addr as *mut u32, value),
            }
        }
    }

    /// One function, as the `ConfigAccess` that `ConfigFilter::probe` uses.
    pub fn function(&self, bdf: Bdf) -> EcamFunction<'_> {
        EcamFunction { ecam: self, bdf }
    }
}

/// Dword access to one function's configuration space.
pub struct EcamFunction<'a> {
    ecam: &'a Ecam,
    bdf: Bdf,
}

impl ConfigAccess for EcamFunction<'_> {
    fn read32(&mut self, reg: u16) -> u32 {
        self.ecam.read(self.bdf, reg & !3, 4)
    }

    fn write32(&mut self, reg: u16, value: u32) {
        self.ecam.write(self.bdf, reg & !3, 4, value)
    }
}
