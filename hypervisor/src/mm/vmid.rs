//! VMID allocation: owns which VMIDs are live and which have been used before.
//!
//! TLB entries are tagged with the VMID, and entries of a destroyed VM can linger after it is
//! gone. Handing its VMID to a new VM therefore needs TLBI VMALLS12E1IS for that VMID (with the
//! VMID in VTTBR_EL2) before the new VM runs. To make that rare, never-used VMIDs are handed out
//! first, upward from 1; only when they run out are freed ones reused (round-robin, so the one
//! freed longest ago tends to come back first), and those grants say `needs_flush`.
//! VMID 0 is reserved (it is what VTTBR_EL2 holds while no VM is loaded).

use alloc::vec;
use alloc::vec::Vec;

/// A VMID handed out by [`VmidAllocator::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmidGrant {
    pub vmid: u16,
    /// The VMID was used before: flush its TLB entries (TLBI VMALLS12E1IS) before first use.
    pub needs_flush: bool,
}

/// Why [`VmidAllocator::free`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmidError {
    /// VMID 0 is reserved and never handed out.
    #[error("VMID 0 is reserved")]
    Reserved,
    /// Wider than the configured VMID width.
    #[error("VMID wider than the configured width")]
    OutOfRange,
    /// Not currently allocated (double free, or never handed out).
    #[error("VMID is not allocated")]
    NotAllocated,
}

/// Allocator of 8- or 16-bit VMIDs.
pub struct VmidAllocator {
    max: u16,
    /// Lowest VMID never handed out; every VMID below it has been used.
    next_fresh: u32,
    /// Where the search for a reusable VMID resumes.
    reuse_cursor: u16,
    /// One bit per VMID: currently allocated.
    live: Vec<u64>,
}

impl VmidAllocator {
    /// `bits` is 16 when ID_AA64MMFR1_EL1.VMIDBits says 16-bit VMIDs are implemented (and
    /// VTCR_EL2.VS is set); any other value means the architectural 8 bits.
    pub fn new(bits: u8) -> Self {
        let max = if bits == 16 { u16::MAX } else { u8::MAX as u16 };
        VmidAllocator {
            max,
            next_fresh: 1,
            reuse_cursor: 1,
            live: vec![0; (max as usize + 1) / 64],
        }
    }

    /// Largest VMID this allocator hands out.
    pub fn max_vmid(&self) -> u16 {
        self.max
    }

    /// A free VMID, preferring ones never used; None when all are live.
    pub fn alloc(&mut self) -> Option<VmidGrant> {
        if self.next_fresh <= u32::from(self.max) {
            let vmid = self.next_fresh as u16;
            self.next_fresh += 1;
            self.set_live(vmid, true);
            return Some(VmidGrant {
                vmid,
                needs_flush: false,
            });
        }
        let mut vmid = self.reuse_cursor;
        for _ in 0..self.max {
            if !self.is_live(vmid) {
                self.set_live(vmid, true);
                self.reuse_cursor = if vmid == self.max { 1 } else { vmid + 1 };
                return Some(VmidGrant {
                    vmid,
                    needs_flush: true,
                });
            }
            vmid = if vmid == self.max { 1 } else { vmid + 1 };
        }
        None
    }

    /// Releases a live VMID.
    pub fn free(&mut self, vmid: u16) -> Result<(), VmidError> {
        if vmid == 0 {
            return Err(VmidError::Reserved);
        }
        if vmid > self.max {
            return Err(VmidError::OutOfRange);
        }
        if !self.is_live(vmid) {
            return Err(VmidError::NotAllocated);
        }
        self.set_live(vmid, false);
        Ok(())
    }

    fn is_live(&self, vmid: u16) -> bool {
        self.live[usize::from(vmid / 64)] & (1 << (vmid % 64)) != 0
    }

    fn set_live(&mut self, vmid: u16, live: bool) {
        let word = &mut self.live[usize::from(vmid / 64)];
        if live {
            *word |= 1 << (vmid % 64);
        } else {
            *word &= !(1 << (vmid % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_exhausts_after_255() {
        let mut v = VmidAllocator::new(8);
        let grants: Vec<VmidGrant> = (0..255).map(|_| v.alloc().unwrap()).collect();
        assert_eq!(
            grants.first().unwrap().vmid,
            1,
            "VMID 0 is never handed out"
        );
        assert!(grants
            .iter()
            .enumerate()
            .all(|(i, g)| g.vmid == i as u16 + 1 && !g.needs_flush));
        assert_eq!(v.alloc(), None);
    }

    #[test]
    fn fresh_vmids_come_before_reuse() {
        let mut v = VmidAllocator::new(8);
        let a = v.alloc().unwrap();
        v.free(a.vmid).unwrap();
        // A freed VMID is not reused while fresh ones remain.
        let b = v.alloc().unwrap();
        assert_eq!(
            b,
            VmidGrant {
                vmid: 2,
                needs_flush: false
            }
        );
    }

    #[test]
    fn reuse_after_free_needs_flush() {
        let mut v = VmidAllocator::new(8);
        for _ in 0..255 {
            v.alloc().unwrap();
        }
        v.free(200).unwrap();
        v.free(7).unwrap();
        // Round-robin from the start of the space once fresh VMIDs ran out.
        assert_eq!(
            v.alloc(),
            Some(VmidGrant {
                vmid: 7,
                needs_flush: true
            })
        );
        assert_eq!(
            v.alloc(),
            Some(VmidGrant {
                vmid: 200,
                needs_flush: true
            })
        );
        assert_eq!(v.alloc(), None);
        // The cursor moves on: after freeing 5 and 250, 250 (past the cursor) comes first.
        v.free(5).unwrap();
        v.free(250).unwrap();
        assert_eq!(v.alloc().unwrap().vmid, 250);
        assert_eq!(v.alloc().unwrap().vmid, 5);
    }

    #[test]
    fn bad_free_refused() {
        let mut v = VmidAllocator::new(8);
        let g = v.alloc().unwrap();
        assert_eq!(v.free(0), Err(VmidError::Reserved));
        assert_eq!(v.free(256), Err(VmidError::OutOfRange));
        assert_eq!(
            v.free(g.vmid + 1),
            Err(VmidError::NotAllocated),
            "never handed out"
        );
        assert_eq!(v.free(g.vmid), Ok(()));
        assert_eq!(v.free(g.vmid), Err(VmidError::NotAllocated), "double free");
    }

    #[test]
    fn sixteen_bit_width() {
        let mut v = VmidAllocator::new(16);
        assert_eq!(v.max_vmid(), u16::MAX);
        let mut last = 0;
        for _ in 0..u16::MAX {
            let g = v.alloc().unwrap();
            assert!(!g.needs_flush);
            last = g.vmid;
        }
        assert_eq!(last, u16::MAX);
        assert_eq!(v.alloc(), None);
        v.free(300).unwrap();
        assert_eq!(
            v.alloc(),
            Some(VmidGrant {
                vmid: 300,
                needs_flush: true
            })
        );
        assert_eq!(v.free(u16::MAX), Ok(()));
    }

    #[test]
    fn other_widths_mean_eight_bits() {
        assert_eq!(VmidAllocator::new(12).max_vmid(), 255);
        assert_eq!(VmidAllocator::new(8).max_vmid(), 255);
    }

    #[test]
    fn errors_display() {
        let texts = [
            VmidError::Reserved,
            VmidError::OutOfRange,
            VmidError::NotAllocated,
        ]
        .map(|e| e.to_string());
        assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2]);
    }
}
