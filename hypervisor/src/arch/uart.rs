//! PL011 UART output. The hypervisor owns the only UART; VMs print through the console hypercall.

use core::fmt;

const DR: usize = 0x00;
const FR: usize = 0x18;
const FR_TXFF: u32 = 1 << 5;

pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the identity-mapped address of a PL011 that nothing else drives.
    pub const unsafe fn new(base: usize) -> Self {
        Pl011 { base }
    }

    pub fn put_byte(&mut self, byte: u8) {
        // SAFETY: `base` is a PL011 register block (constructor contract); FR and DR are within it,
        // and volatile access is how MMIO must be done.
        unsafe {
            while core::ptr::read_volatile((self.base + FR) as *const u32) & FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            core::ptr::write_volatile((self.base + DR) as *mut u32, byte as u32);
        }
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put_byte(b'\r');
            }
            self.put_byte(b);
        }
        Ok(())
    }
}
