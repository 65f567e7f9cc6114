//! Copy pins: GRANT_COPY's page copy runs with no lock held, and this module is what keeps the
//! two frames it copies between from changing hands meanwhile.
//!
//! The protocol (the binary's `sharing.rs` and `ballooning.rs` follow it):
//! - A pin is taken only **under the HV lock**, after the op's checks, on every VM whose RAM the
//!   copy touches (both sides, the caller's own RAM included); then the lock is dropped, the
//!   bytes are copied, and the pin is dropped (no lock needed: an atomic decrement).
//! - Everything that takes RAM away from a VM or writes it on the hypervisor's behalf (GRANT_END's
//!   revoke, a VM's teardown or reload, a balloon release before its scrub) calls
//!   [`CopyPins::wait_unpinned`] for that VM **while holding the HV lock**, after the change that
//!   makes new copies refuse (PERMIT cleared, the VM out of the table, the page marked given).
//!
//! Because no pin can be taken while the waiter holds the lock, the wait covers only copies
//! already past their checks: at most one single-page `memmove` per other pCPU, which no guest
//! can lengthen (a pinned copy takes no lock and cannot be preempted at EL2). So the wait is
//! bounded by hardware, and a revoked grant is never written after GRANT_END returns.

use core::sync::atomic::{AtomicU32, Ordering};

use shared_abi::layout::MAX_VMS;

use super::{vm_index, VmId};

/// Copies in flight per VM id.
pub struct CopyPins {
    counts: [AtomicU32; MAX_VMS],
}

impl Default for CopyPins {
    fn default() -> Self {
        Self::new()
    }
}

/// Pins held by one copy; dropping it ends the copy's claim on the VMs' RAM.
#[must_use = "the pins are released when this is dropped"]
pub struct Pinned<'p> {
    pins: &'p CopyPins,
    vms: [Option<usize>; 2],
}

impl CopyPins {
    pub const fn new() -> Self {
        CopyPins {
            counts: [const { AtomicU32::new(0) }; MAX_VMS],
        }
    }

    /// Pins the RAM of `a` and `b` (may be the same VM) for one copy. Take it under the HV lock,
    /// after the checks that made the copy legal; `None` for an id that is not a VM.
    pub fn pin(&self, a: VmId, b: VmId) -> Option<Pinned<'_>> {
        let (a, b) = (vm_index(a)?, vm_index(b)?);
        // At most one pin per pCPU per VM side: a count that could overflow is a bug, not a
        // guest's doing, so it is refused rather than wrapped.
        for (i, &vm) in [a, b].iter().enumerate() {
            if self.counts[vm]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(1))
                .is_err()
            {
                if i == 1 {
                    self.counts[a].fetch_sub(1, Ordering::Release);
                }
                return None;
            }
        }
        Some(Pinned {
            pins: self,
            vms: [Some(a), Some(b)],
        })
    }

    /// Copies in flight that touch `vm`'s RAM.
    pub fn count(&self, vm: VmId) -> u32 {
        vm_index(vm).map_or(0, |i| self.counts[i].load(Ordering::Acquire))
    }

    /// Returns once no copy touching `vm`'s RAM is in flight; `relax` runs between looks (a spin
    /// hint on the machine). Call it holding the HV lock (see the module documentation for why
    /// that bounds the wait). Returns how many looks found a copy in flight.
    pub fn wait_unpinned(&self, vm: VmId, mut relax: impl FnMut()) -> u64 {
        let mut busy = 0;
        // Acquire pairs with the copier's Release decrement: once the count is seen at zero,
        // the copy's writes are visible to whoever takes the RAM next.
        while self.count(vm) > 0 {
            busy += 1;
            relax();
        }
        busy
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        for vm in self.vms.iter().flatten() {
            self.pins.counts[*vm].fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_pin_counts_both_sides_and_its_drop_releases_them() {
        let pins = CopyPins::new();
        let p = pins.pin(1, 3).unwrap();
        assert_eq!((pins.count(1), pins.count(2), pins.count(3)), (1, 0, 1));
        let q = pins.pin(3, 3).unwrap();
        assert_eq!(pins.count(3), 3);
        drop(p);
        assert_eq!((pins.count(1), pins.count(3)), (0, 2));
        drop(q);
        assert_eq!(pins.count(3), 0);
    }

    #[test]
    fn ids_that_are_not_vms_are_refused_and_pin_nothing() {
        let pins = CopyPins::new();
        let last = MAX_VMS as VmId;
        assert!(pins.pin(0, 1).is_none());
        assert!(pins.pin(1, last + 1).is_none());
        assert_eq!(pins.count(1), 0);
        assert!(pins.pin(last, last).is_some());
        assert_eq!(pins.count(last), 0);
    }

    #[test]
    fn a_full_count_is_refused_and_leaves_the_other_side_as_it_was() {
        let pins = CopyPins::new();
        pins.counts[vm_index(1).unwrap()].store(u32::MAX, Ordering::Relaxed);
        assert!(pins.pin(1, 2).is_none());
        assert!(pins.pin(2, 1).is_none());
        assert_eq!(pins.count(2), 0);
        assert_eq!(pins.count(1), u32::MAX);
    }

    #[test]
    fn waiting_on_an_unpinned_vm_returns_at_once() {
        let pins = CopyPins::new();
        let _other = pins.pin(2, 2).unwrap();
        let mut looks = 0;
        assert_eq!(pins.wait_unpinned(1, || looks += 1), 0);
        assert_eq!(looks, 0);
    }

    /// The revoke guarantee: a copier that pinned before the waiter looked has finished writing
    /// when `wait_unpinned` returns. The copier writes a long run of words one by one, so a wait
    /// that returned early would see some of them unwritten.
    #[test]
    fn the_wait_returns_only_after_every_pinned_copy_has_written() {
        for _ in 0..50 {
            let pins: &'static CopyPins = Box::leak(Box::new(CopyPins::new()));
            let data: Arc<Vec<AtomicU32>> =
                Arc::new((0..4096).map(|_| AtomicU32::new(0)).collect());
            let pinned = pins.pin(1, 2).unwrap();
            let started = Arc::new(AtomicBool::new(false));
            let copier = {
                let (data, started) = (data.clone(), started.clone());
                std::thread::spawn(move || {
                    started.store(true, Ordering::Release);
                    for word in data.iter() {
                        word.store(7, Ordering::Relaxed);
                    }
                    drop(pinned);
                })
            };
            while !started.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            pins.wait_unpinned(2, std::hint::spin_loop);
            assert!(data.iter().all(|w| w.load(Ordering::Relaxed) == 7));
            assert_eq!(pins.count(1), 0);
            copier.join().unwrap();
        }
    }
}
