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
//! **Phases, so that no guest can lengthen a wait.** A check takes its pin *before* it can tell
//! whether it will refuse, so pins keep coming after the change too, each held only for a check
//! that then refuses. With one count per VM a waiter had to see that count at zero, and any
//! guest can make GRANT_COPY ops that name another VM (a refused op pins it for its check):
//! guests on the other pCPUs could keep the count above zero, and the wait, which holds the HV
//! lock, would last as long as they liked. So each VM has two counts and a phase: a pin joins
//! the count of the phase it read, then reads the phase again and, if a wait began in between,
//! leaves and joins the new one (at most [`PIN_TRIES`] times, then `Busy`). A wait starts a new
//! phase and waits only for the old phase's count: the pins taken before it began. A pin that
//! stayed in the old phase read it again before the new phase began, so that wait sees it; a
//! pin of the new phase read the phase after the change and its check refuses.
//!
//! So the wait covers only copies already past their checks (and checks under way): at most
//! one single-page `memmove` per other pCPU, which no guest can lengthen (a pinned copy takes
//! no lock beyond the views' short checks, and cannot be preempted at EL2). So the wait is
//! bounded by hardware, and a revoked grant is never written after GRANT_END returns.
//! Waits are serialised by the HV lock, so one phase ends before the next begins.

use core::sync::atomic::{AtomicU32, Ordering};

use shared_abi::layout::MAX_VMS;

use super::{vm_index, VmId};

/// How often a pin joins a phase that a wait then leaves behind before it gives up (`Busy`):
/// each retry needs a wait to begin within the pin's few instructions.
pub const PIN_TRIES: usize = 4;

/// Copies in flight per VM id, counted per phase (see the module documentation).
pub struct CopyPins {
    counts: [[AtomicU32; 2]; MAX_VMS],
    /// Per VM, how many waits have begun; its low bit picks the count new pins join.
    phases: [AtomicU32; MAX_VMS],
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
    phase: usize,
}

impl CopyPins {
    pub const fn new() -> Self {
        CopyPins {
            counts: [const { [AtomicU32::new(0), AtomicU32::new(0)] }; MAX_VMS],
            phases: [const { AtomicU32::new(0) }; MAX_VMS],
        }
    }

    /// Pins the RAM of `vm` for one copy. Take it under the VM's copy-view lock, before the
    /// check reads the VM's memory; `None` for an id that is not a VM, or when waits kept
    /// beginning under it ([`PIN_TRIES`]).
    pub fn pin(&self, vm: VmId) -> Option<Pin<'_>> {
        self.pin_between(vm, || {})
    }

    /// [`CopyPins::pin`], running `between` between the count and the second look at the phase
    /// (where the tests start waits).
    fn pin_between(&self, vm: VmId, mut between: impl FnMut()) -> Option<Pin<'_>> {
        let vm = vm_index(vm)?;
        // SeqCst throughout: see the module documentation (GRANT_END, phases).
        for _ in 0..PIN_TRIES {
            let seen = self.phases[vm].load(Ordering::SeqCst);
            let phase = (seen & 1) as usize;
            let count = &self.counts[vm][phase];
            // At most one pin per pCPU per side: a count that could overflow is a bug, not a
            // guest's doing, so it is refused rather than wrapped.
            count
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_add(1))
                .ok()?;
            between();
            if self.phases[vm].load(Ordering::SeqCst) == seen {
                return Some(Pin {
                    pins: self,
                    vm,
                    phase,
                });
            }
            // A wait began in between and may already have seen this count at zero.
            count.fetch_sub(1, Ordering::Release);
        }
        None
    }

    /// Copies in flight that touch `vm`'s RAM, in both phases.
    pub fn count(&self, vm: VmId) -> u32 {
        vm_index(vm).map_or(0, |i| {
            self.counts[i]
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .fold(0, u32::saturating_add)
        })
    }

    /// Returns once no copy that touched `vm`'s RAM when it was called is in flight (copies
    /// pinned after it began are not waited for: their checks see the change made before it);
    /// `relax` runs between looks (a spin hint on the machine). Call it holding the HV lock
    /// (see the module documentation for why that bounds the wait). Returns how many looks
    /// found a copy in flight.
    pub fn wait_unpinned(&self, vm: VmId, mut relax: impl FnMut()) -> u64 {
        let Some(i) = vm_index(vm) else {
            return 0;
        };
        let old = (self.phases[i].fetch_add(1, Ordering::SeqCst) & 1) as usize;
        let mut busy = 0;
        // The load (SeqCst, so also Acquire) pairs with the copier's Release decrement: once the
        // count is seen at zero, the copy's writes are visible to whoever takes the RAM next.
        while self.counts[i][old].load(Ordering::SeqCst) > 0 {
            busy += 1;
            relax();
        }
        busy
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.pins.counts[self.vm][self.phase].fetch_sub(1, Ordering::Release);
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
        pins.counts[vm_index(1).unwrap()][0].store(u32::MAX, Ordering::Relaxed);
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

    /// Pins taken while a wait runs (other guests' ops naming the VM, each pinning it for its
    /// check) do not keep the wait going: it waits only for the pins taken before it began.
    /// With one count per VM this wait never returned.
    #[test]
    fn pins_taken_during_a_wait_do_not_lengthen_it() {
        let pins = CopyPins::new();
        let mut before = Some(pins.pin(1).unwrap());
        let mut during = Vec::new();
        let mut looks = 0;
        let busy = pins.wait_unpinned(1, || {
            looks += 1;
            assert!(looks < 100, "the wait is held by pins taken after it began");
            during.push(pins.pin(1).unwrap());
            if looks == 3 {
                before = None;
            }
        });
        assert!(before.is_none());
        assert_eq!(busy, 3);
        assert_eq!(pins.count(1), 3, "the later pins are still counted");
        // The next wait waits for them.
        let mut next_looks = 0;
        pins.wait_unpinned(1, || {
            next_looks += 1;
            during.pop();
        });
        assert_eq!((next_looks, pins.count(1)), (3, 0));
    }

    /// A pin under which a wait began leaves the count it joined (the wait may already have
    /// seen it at zero) and joins the new phase; one that waits keep beginning under gives up.
    #[test]
    fn a_pin_that_a_wait_began_under_moves_to_the_new_phase_or_gives_up() {
        let pins = CopyPins::new();
        // A wait begins by starting a new phase (then it waits for the old phase's count).
        let mut waits = 0;
        let p = pins
            .pin_between(1, || {
                if waits == 0 {
                    waits += 1;
                    pins.phases[0].fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
        assert_eq!(p.phase, 1);
        assert_eq!(
            pins.counts[0][0].load(Ordering::Relaxed),
            0,
            "the old phase's count left"
        );
        assert_eq!(pins.counts[0][1].load(Ordering::Relaxed), 1);
        drop(p);
        let mut tries = 0;
        let refused = pins.pin_between(1, || {
            tries += 1;
            pins.phases[0].fetch_add(1, Ordering::SeqCst);
        });
        assert!(refused.is_none());
        assert_eq!(tries, PIN_TRIES);
        assert_eq!(pins.count(1), 0, "a pin that gave up holds nothing");
    }

    /// Waits and pins racing on several threads: every wait returns and no pin is left.
    #[test]
    fn waits_racing_pins_all_return_and_leave_no_pin() {
        let pins: &'static CopyPins = Box::leak(Box::new(CopyPins::new()));
        let pinned = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let copiers: Vec<_> = (0..3)
            .map(|_| {
                let (pinned, stop) = (pinned.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(p) = pins.pin(1) {
                            pinned.fetch_add(1, Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        let mut waits = 0u64;
        while waits < 2_000 || pinned.load(Ordering::Relaxed) < 20_000 {
            pins.wait_unpinned(1, std::hint::spin_loop);
            waits += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for c in copiers {
            c.join().unwrap();
        }
        assert_eq!(pins.count(1), 0);
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
