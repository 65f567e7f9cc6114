//! The warm spare of RAM for the NIC's driver domain (issue 14): the hypervisor's side of
//! `hypervisor::restart::SpareRam`.
//!
//! At boot a run the size of the driver domain's RAM is set aside (allocated, so not free
//! memory: the balloon's free-memory line prints it apart) and zeroed before any VM runs.
//! Later spares (a restart's old RAM) are zeroed by idle pCPUs, a chunk at a time
//! ([`scrub_a_chunk`], called from the scheduler's idle loop): each chunk is claimed under the
//! HV lock, zeroed and cleaned from the caches with no lock held, and reported done under the
//! lock again, so no other VM's trap waits for the zeroing (threat class 5). A restart of
//! the driver domain swaps the spare in for its RAM at once when every chunk is done
//! ([`Hv::swap_in_spare`]), and the old RAM, once nothing maps it, becomes the next spare; a
//! restart that finds the spare not ready (a crash soon after the last) zeroes the RAM as
//! before. A machine without room for a spare says so at boot and restarts the old way.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hypervisor::restart::SpareRam;
use log::info;
use shared_abi::layout::PAGE_SIZE;

use crate::arch::cpu;
use alloc::format;
use alloc::string::String;

use crate::arch::mem::{scrub_run, zva_block, VmRam};
use crate::locks::Unlocked;
use crate::machine::Hv;

/// A spare may have chunks left to zero: the idle loop takes the HV lock to look only then.
static SCRUB_PENDING: AtomicBool = AtomicBool::new(false);
/// No scrubbing before this counter value: a restart's old RAM waits [`SCRUB_AFTER_RESTART_MS`]
/// before idle pCPUs zero it.
static SCRUB_NOT_BEFORE: AtomicU64 = AtomicU64::new(0);
/// How long after a restart the idle pCPUs leave the old RAM alone. Zeroing keeps an idle
/// pCPU busy where it would sleep in WFI; on a host with fewer free cores than vCPU threads
/// (QEMU's, under load) that time comes out of the restarted driver domain's own bring-up
/// (its NIC up 14-140 ms later in the first measurement). The next restart does not need the
/// spare before its back-off anyway.
const SCRUB_AFTER_RESTART_MS: u64 = 500;

impl Hv {
    /// Sets the NIC's driver domain's spare aside and zeroes it now (boot, before any vCPU
    /// runs, so no lock is contended): under a busy start (two iperf3 streams from the first
    /// second) the idle pCPUs had zeroed only 20 of 32 MiB when the driver domain crashed 4 s
    /// in.
    pub fn set_up_spare(&mut self) {
        let Some(owner) = self.passthrough.as_ref().map(|p| p.owner_id) else {
            return;
        };
        let Some((name, bytes)) = self
            .vms
            .iter()
            .flatten()
            .find(|vm| vm.id == owner)
            .map(|vm| (vm.name.clone(), vm.ram_bytes))
        else {
            return;
        };
        match VmRam::alloc(&mut self.frames, bytes) {
            Some(ram) => {
                let pa = ram.into_pa();
                scrub_run(pa, bytes);
                self.spare = Some(SpareRam::clean(owner, pa, bytes));
                info!(
                    "warm spare: {} MiB set aside for {name}'s next restart (zeroed at boot, {})",
                    bytes >> 20,
                    match zva_block() {
                        Some(block) => format!("DC ZVA in {block}-byte blocks"),
                        None => String::from("with stores: DC ZVA prohibited"),
                    }
                );
            }
            None => no_room(&name, bytes),
        }
    }

    /// Allocates a new spare of `bytes` for VM `owner` (`name`) after a restart, to be zeroed
    /// by idle pCPUs; on a machine without room for it, says that restarts zero the RAM first.
    pub fn new_spare(&mut self, owner: u16, name: &str, bytes: u64) {
        match VmRam::alloc(&mut self.frames, bytes) {
            Some(ram) => {
                self.set_dirty_spare(SpareRam::dirty(owner, ram.into_pa(), bytes));
                info!(
                    "warm spare: {} MiB set aside for {name}'s next restart (zeroed by idle pCPUs)",
                    bytes >> 20
                );
            }
            None => no_room(name, bytes),
        }
    }

    /// For a restart of the VM at `vm_index`: if its spare is ready, makes it the VM's RAM
    /// (remapped at stage 2, the old translations invalidated) and puts the old RAM's PA in
    /// `old`. True if it did; false (nothing changed) without a ready spare.
    pub fn swap_in_spare(&mut self, vm_index: usize, old: &mut Option<u64>) -> bool {
        let Some(vm) = self.vms.get_mut(vm_index).and_then(Option::as_mut) else {
            return false;
        };
        let Some(spare) = self.spare.as_ref().filter(|s| s.owner == vm.id) else {
            return false;
        };
        let Some((pa, len)) = spare.take() else {
            info!(
                "warm spare of {} not ready ({} of {} KiB zeroed): zeroing its RAM",
                vm.name,
                spare.zeroed() / 1024,
                spare.len() / 1024
            );
            return false;
        };
        if len != vm.ram_bytes {
            return false;
        }
        self.spare = None;
        match vm.replace_ram_with(VmRam::from_pa(pa, len), &mut self.frames, &mut self.iommu) {
            Ok(old_pa) => {
                *old = Some(old_pa);
                true
            }
            Err(ram) => {
                // The remap failed and the old RAM is back: the spare stays ready.
                self.spare = Some(SpareRam::clean(vm.id, ram.into_pa(), len));
                false
            }
        }
    }

    /// Makes `spare` (a restart's old RAM, or a fresh run, to be zeroed) the spare and wakes
    /// the idle loop's scrubbing [`SCRUB_AFTER_RESTART_MS`] from now.
    pub fn set_dirty_spare(&mut self, spare: SpareRam) {
        self.spare = Some(spare);
        let delay = cpu::counter_frequency() * SCRUB_AFTER_RESTART_MS / 1000;
        SCRUB_NOT_BEFORE.store(cpu::counter() + delay, Ordering::Relaxed);
        SCRUB_PENDING.store(true, Ordering::Release);
    }

    /// Frees the spare (its owner is gone, and no chunk is being zeroed).
    pub fn free_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            let (pa, len) = spare.run();
            let _ = self.frames.free(pa, (len / PAGE_SIZE) as usize);
        }
    }

    /// The spare's size for the free-memory line: allocated, not free, not in the credit.
    pub fn spare_bytes(&self) -> u64 {
        self.spare.as_ref().map_or(0, SpareRam::len)
    }
}

/// Says there is no room for a spare of `bytes` for `name`, and what a restart does then.
fn no_room(name: &str, bytes: u64) {
    info!(
        "warm spare: no room for {} MiB beside the VMs; a restart of {name} zeroes its RAM first",
        bytes >> 20
    );
}

/// Zeroes one chunk of the spare if one is left (the scheduler's idle loop, no lock held on
/// entry): true if it did, so the caller looks at the run queue again before sleeping.
pub fn scrub_a_chunk(entry: &mut Unlocked) -> bool {
    if !SCRUB_PENDING.load(Ordering::Acquire)
        || cpu::counter() < SCRUB_NOT_BEFORE.load(Ordering::Relaxed)
    {
        return false;
    }
    let chunk = crate::hv::with_hv(entry, |hv, _| {
        let chunk = hv.spare.as_mut().and_then(SpareRam::claim);
        if chunk.is_none() {
            // Every chunk claimed (or no spare): set again under the lock by the next one.
            SCRUB_PENDING.store(false, Ordering::Release);
        }
        chunk
    });
    let Some((pa, len)) = chunk else {
        return false;
    };
    // The chunk was claimed under the HV lock: part of a spare no VM maps, which is neither
    // taken (not ready while a chunk is in flight) nor freed (a retired spare waits for its
    // chunks) nor claimed again until it is reported below.
    scrub_run(pa, len);
    crate::hv::with_hv(entry, |hv, _| {
        if hv.spare.as_mut().is_some_and(|s| s.scrubbed(len)) {
            hv.free_spare();
        }
    });
    true
}
