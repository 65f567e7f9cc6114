//! Copy pins: GRANT_COPY's page copy runs with no lock held, and this module is what keeps the
//! two frames it copies between from changing hands meanwhile.
//!
//! The protocol (the binary's `sharing.rs` and `ballooning.rs` follow it):
//! - A pin is taken on one VM under **that VM's copy-view lock**, by the op's check of the side
//!   in that VM, before it reads anything of the VM's (`super::copy`): the caller's RAM (its op
//!   and status word) and each granter's. Then the lock is dropped, the bytes are copied, the
//!   status word is written, and the pins are dropped (no lock needed: an atomic decrement).
//! - Everything that takes RAM away from a VM or writes it on the hypervisor's behalf (GRANT_END's
//!   revoke, a VM's teardown or reload, a balloon release before its scrub) first makes new
//!   checks refuse (PERMIT cleared, the view closed, the page marked given in the view), then
//!   calls [`CopyPins::wait_unpinned`] for that VM holding the HV lock and **no** VM's view
//!   lock: a copier holds pins while it takes the next side's view lock, never the HV lock.
//!
//! A pin taken before the change is waited for; a check after the change refuses. For a view
//! change both happen under the view's lock, so one is before the other. GRANT_END clears
//! PERMIT in guest memory without that lock: there the pin is taken *before* the entry is read
//! and both the pin and the wait's look are sequentially consistent, so either the wait sees the
//! pin or the read sees PERMIT cleared.
//!
//! So the wait covers only copies already past their checks: at most one single-page
//! `memmove` per other pCPU, which no guest can lengthen (a pinned copy takes no lock beyond
//! the views' short checks, and cannot be preempted at EL2). So the wait is bounded by
//! hardware, and a revoked grant is never written after GRANT_END returns.

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

/// A pin on one VM's RAM; dropping it ends the copy's claim on that RAM.
#[must_use = "the pin is released when this is dropped"]
pub struct Pin<'p> {
    pins: &'p CopyPins,
    vm: usize,
}

impl CopyPins {
    pub const fn new() -> Self {
        CopyPins {
            counts: [const { AtomicU32::new(0) }; MAX_VMS],
        }
    }

    /// Pins the RAM of `vm` for one copy. Take it under the VM's copy-view lock, before the
    /// check reads the VM's memory; `None` for an id that is not a VM.
    pub fn pin(&self, vm: VmId) -> Option<Pin<'_>> {
        let vm = vm_index(vm)?;
        // At most one pin per pCPU per side: a count that could overflow is a bug, not a
        // guest's doing, so it is refused rather than wrapped. SeqCst: see the module
        // documentation (GRANT_END).
        self.counts[vm]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_add(1))
            .ok()?;
        Some(Pin { pins: self, vm })
    }

    /// Copies in flight that touch `vm`'s RAM.
    pub fn count(&self, vm: VmId) -> u32 {
        vm_index(vm).map_or(0, |i| self.counts[i].load(Ordering::SeqCst))
    }

    /// Returns once no copy touching `vm`'s RAM is in flight; `relax` runs between looks (a spin
    /// hint on the machine). Call it holding the HV lock (see the module documentation for why
    /// that bounds the wait). Returns how many looks found a copy in flight.
    pub fn wait_unpinned(&self, vm: VmId, mut relax: impl FnMut()) -> u64 {
        let mut busy = 0;
        // The load (SeqCst, so also Acquire) pairs with the copier's Release decrement: once the count is seen at zero,
        // the copy's writes are visible to whoever takes the RAM next.
        while self.count(vm) > 0 {
            busy += 1;
            relax();
        }
        busy
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.pins.counts[self.vm].fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_pin_counts_its_vm_and_its_drop_releases_it() {
        let pins = CopyPins::new();
        let p = pins.pin(1).unwrap();
        let q = pins.pin(3).unwrap();
        assert_eq!((pins.count(1), pins.count(2), pins.count(3)), (1, 0, 1));
        let r = pins.pin(3).unwrap();
        assert_eq!(pins.count(3), 2);
        drop(p);
        drop(q);
        assert_eq!((pins.count(1), pins.count(3)), (0, 1));
        drop(r);
        assert_eq!(pins.count(3), 0);
    }

    #[test]
    fn ids_that_are_not_vms_are_refused_and_pin_nothing() {
        let pins = CopyPins::new();
        let last = MAX_VMS as VmId;
        assert!(pins.pin(0).is_none());
        assert!(pins.pin(last + 1).is_none());
        assert_eq!(pins.count(1), 0);
        assert!(pins.pin(last).is_some());
        assert_eq!(pins.count(last), 0);
    }

    #[test]
    fn a_full_count_is_refused_and_left_as_it_was() {
        let pins = CopyPins::new();
        pins.counts[vm_index(1).unwrap()].store(u32::MAX, Ordering::Relaxed);
        assert!(pins.pin(1).is_none());
        assert_eq!(pins.count(1), u32::MAX);
        assert!(pins.pin(2).is_some());
    }

    #[test]
    fn waiting_on_an_unpinned_vm_returns_at_once() {
        let pins = CopyPins::new();
        let _other = pins.pin(2).unwrap();
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
            let pinned = (pins.pin(1).unwrap(), pins.pin(2).unwrap());
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
