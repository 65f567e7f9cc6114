//! The balloon in the running hypervisor: the balloon calls (the rules are the library's
//! `balloon`) carried out on a VM's stage 2, the frame allocator, the SMMU and the balloon's
//! credit, and the free-memory line it logs.
//!
//! Where the frames go: a page a VM gives back is taken out of its stage 2 under the HV lock
//! (recorded as given, unmapped, invalidated, and any GRANT_COPY still copying the VM's RAM
//! waited for), scrubbed with **no lock held** ([`Scrub`]), then, under the lock again, returned
//! to the frame allocator (cut out of the VM's RAM allocation) and credited. A populated page
//! is a fresh frame from the allocator, and the credit shrinks by one: a populate batch sets
//! its frames aside under the lock, zeroes them with no lock held ([`Fresh`]), maps them under
//! the lock again and gives back what it did not use. So the credit is
//! what the balloon may still hand out, the frames themselves live in the free memory, and
//! "free memory + credit" is what the log line shows stay constant while memory moves (a batch
//! being scrubbed is in neither for that moment).
//!
//! Between the two lock holds the frames are the scrubbing pCPU's alone: out of the VM's stage
//! 2 and TLBs, refused by every view of its RAM (marked given), not yet free. A concurrent
//! release by another vCPU of the same VM finds those pages given (`InvalidArgument`); a
//! populate of their GPAs maps other frames (the credit has not grown yet, so it cannot be
//! handed these); and a stop of the VM cannot complete meanwhile, because the vCPU scrubbing
//! is still running (a stop finishes only once none of the VM's vCPUs runs), so the VM's RAM
//! allocation the frames are cut out of is still there when they are freed.
//!
//! Targets (`hypervisor::balloon::targets`): one table by VM id behind [`TARGETS`], a leaf
//! lock only ever taken under the HV lock. BALLOON_TARGET reads it, BALLOON_SET_TARGET
//! (driver domains) writes it, and [`Hv::apply_balloon_targets`], called from the trap exit
//! when [`targets_due`] says so (one atomic load and compare otherwise), applies due schedule
//! points and names the vCPUs to raise `TARGET_INTID` in.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use hypervisor::balloon::targets::{check_set_target, free_for_targets, Targets, VmMemory};
use hypervisor::balloon::{populate_reserve, read_batch, BalloonEnv, BatchResult};
use hypervisor::grant::{GrantTables, VmId};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::stage2::Stage2;
use hypervisor::sched::VcpuId;
use log::info;
use shared_abi::bundle::{Bundle, VmKind};
use shared_abi::hypercall::{self, Status};
use shared_abi::layout::{start_info_gpa, GUEST_RAM_BASE, PAGE_SIZE};

use crate::arch::mem::{scrub_frame, PhysTableMemory};
use crate::iommu::Iommu;
use crate::machine::Hv;
use crate::sharing::wait_for_copies;
use crate::vm::RAM_ATTRS;

/// Every VM's balloon target and schedule. Taken only under the HV lock (a leaf lock).
static TARGETS: spin::Mutex<Targets> = spin::Mutex::new(Targets::new());
/// When the trap exit must next look at the targets (counter ticks): the next schedule point,
/// 0 when a target changed and its VM has not been told, `u64::MAX` when nothing is left.
/// Starts at 0: the first trap exit loads the schedules and starts their clock.
static NEXT_DUE: AtomicU64 = AtomicU64::new(0);

/// True when [`Hv::apply_balloon_targets`] has work at counter value `now`: the trap exit's
/// cheap check.
pub fn targets_due(now: u64) -> bool {
    now >= NEXT_DUE.load(Ordering::Relaxed)
}

/// One VM's machine, as the balloon's rules see it.
struct Machine<'a> {
    stage2: &'a mut Stage2,
    vmid: u16,
    vm_id: VmId,
    ram_bytes: u64,
    event_page: Option<u64>,
    grants: &'a GrantTables,
    frames: &'a mut FrameAllocator,
    iommu: &'a mut Iommu,
    /// Frames given back in this batch, scrubbed and freed after the lock is dropped.
    scrub: &'a mut Scrub,
    /// Frames set aside from the credit for this batch and zeroed outside the lock.
    fresh: &'a mut Fresh,
}

/// Frames a populate batch may map: taken from the credit and the allocator under the HV lock
/// ([`Hv::balloon_reserve`]), zeroed with no lock held ([`Fresh::zero`]), handed out by the
/// batch, and what it did not use freed and credited back ([`Hv::balloon_unreserve`]). Between
/// the holds they are the caller's alone: allocated, in no VM's stage 2, not in the credit.
#[derive(Default)]
pub struct Fresh {
    frames: Vec<u64>,
}

impl Fresh {
    /// Zeroes every frame. Runs with no lock held.
    pub fn zero(&self) {
        for &pa in &self.frames {
            scrub_frame(pa);
        }
    }
}

/// Frames a balloon batch took from a VM, to be zeroed with no lock held and then freed and
/// credited by [`Hv::balloon_freed`].
#[derive(Default)]
pub struct Scrub {
    /// Frames of the VM's RAM from the topology (cut out of its allocation when freed).
    ram: Vec<u64>,
    /// Populated frames (single-frame allocations).
    populated: Vec<u64>,
}

impl Scrub {
    pub fn is_empty(&self) -> bool {
        self.ram.is_empty() && self.populated.is_empty()
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.ram.len() + self.populated.len()
    }

    /// Zeroes every frame. Runs with no lock held: the frames are the caller's alone (see the
    /// module documentation).
    pub fn run(&self) {
        for &pa in self.ram.iter().chain(&self.populated) {
            scrub_frame(pa);
        }
    }
}

impl BalloonEnv for Machine<'_> {
    fn in_use(&self, gpa: u64) -> bool {
        gpa == start_info_gpa(self.ram_bytes)
            || self.event_page == Some(gpa)
            || self.grants.page_in_use(self.vm_id, gpa)
    }

    fn unmap(&mut self, gpa: u64) -> bool {
        let (vmid, root) = (self.vmid, self.stage2.root_pa());
        let iommu = &mut *self.iommu;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let unmapped = self
            .stage2
            .unmap(
                &mut PhysTableMemory {
                    frames: self.frames,
                },
                gpa,
                PAGE_SIZE,
                &mut |ipa, size| pieces.push((ipa, size)),
                &mut |ipa, size| iommu.invalidate_ipas(vmid, root, &[(ipa, size)]),
            )
            .is_ok();
        // Before the frame is scrubbed or handed on, no CPU and no device may still reach it.
        iommu.invalidate_ipas(vmid, root, &pieces);
        unmapped
    }

    fn map(&mut self, gpa: u64, pa: u64) -> bool {
        self.stage2
            .map(
                &mut PhysTableMemory {
                    frames: self.frames,
                },
                gpa,
                pa,
                PAGE_SIZE,
                RAM_ATTRS,
            )
            .is_ok()
    }

    fn give_ram_frame(&mut self, pa: u64) {
        self.scrub.ram.push(pa);
    }

    fn give_frame(&mut self, pa: u64) {
        self.scrub.populated.push(pa);
    }

    fn take_frame(&mut self) -> Option<u64> {
        // Zeroed already, and taken from the credit when set aside.
        self.fresh.frames.pop()
    }

    fn heap_low(&self) -> bool {
        crate::arch::heap::free_bytes() < crate::boot::HEAP_RESERVE
    }
}

impl Hv {
    /// A balloon call of VM `vm_index` (checked by the library's rules): x0's status, x1, x2,
    /// and the frames it took from the VM, for the caller to [`Scrub::run`] once the HV lock is
    /// dropped and then hand to [`Hv::balloon_freed`].
    #[allow(clippy::too_many_arguments)] // the HV lock's token on top of the call's own
    pub fn balloon_call(
        &mut self,
        token: &mut crate::locks::HvHeld,
        vm_index: usize,
        function: u64,
        x1: u64,
        x2: u64,
        scrub: &mut Scrub,
        fresh: &mut Fresh,
    ) -> (Status, Option<u64>, Option<u64>) {
        // Read under the HV lock, which every EVTCHN_SETUP holds: it stays the page until the
        // batch is done, and the batch refuses it.
        let event_page = self
            .vms
            .get(vm_index)
            .and_then(Option::as_ref)
            .and_then(|vm| crate::sharing::events(token).event_page(vm.id));
        let Some(vm) = self.vms.get_mut(vm_index).and_then(Option::as_mut) else {
            return (Status::InvalidArgument, None, None);
        };
        if function == hypercall::BALLOON_INFO {
            return (
                Status::Ok,
                Some(vm.balloon.pages()),
                Some(self.balloon_credit),
            );
        }
        if function == hypercall::BALLOON_TARGET {
            let ram_pages = vm.ram_bytes / PAGE_SIZE;
            let target = TARGETS
                .lock()
                .get(vm.id)
                .map_or(ram_pages, |t| t.pages(ram_pages));
            return (Status::Ok, Some(target), None);
        }
        if function == hypercall::BALLOON_SET_TARGET {
            let driver = vm.kind == VmKind::DriverDomain;
            return (self.balloon_set_target(driver, x1, x2), None, None);
        }
        // The array, read once, from memory the VM still has.
        let ram = vm.ram();
        let pages = read_batch(x2, |count| {
            let offset = x1.checked_sub(GUEST_RAM_BASE)?;
            let words = ram.atomics(offset, count)?;
            Some(
                words
                    .iter()
                    .map(|w| w.load(core::sync::atomic::Ordering::Relaxed))
                    .collect(),
            )
        });
        let Some(pages) = pages else {
            return (Status::InvalidArgument, Some(0), None);
        };
        let ram_pa = vm.ram.pa();
        let mut machine = Machine {
            stage2: &mut vm.stage2,
            vmid: vm.vmid,
            vm_id: vm.id,
            ram_bytes: vm.ram_bytes,
            event_page,
            grants: &self.sharing.grants,
            frames: &mut self.frames,
            iommu: &mut self.iommu,
            scrub,
            fresh,
        };
        let giving = function == hypercall::BALLOON_RELEASE;
        let (given_before, fresh_before) = (machine.scrub.len(), machine.fresh.frames.len());
        let result: BatchResult = if giving {
            vm.balloon.release(&mut machine, ram_pa, &pages)
        } else {
            vm.balloon.populate(&mut machine, &pages)
        };
        // Given frames go in transit until scrubbed and credited (`balloon_freed`); set-aside
        // frames the batch mapped are the VM's now, out of transit.
        let given = machine.scrub.len().saturating_sub(given_before) as u64;
        let mapped = fresh_before.saturating_sub(machine.fresh.frames.len()) as u64;
        self.balloon_in_transit = (self.balloon_in_transit + given).saturating_sub(mapped);
        if giving && !machine.scrub.is_empty() {
            // Copies check the VM's copy view, not the HV lock, so the view gets the record
            // first; a copy of this VM's RAM checked before that may still be running with no
            // lock: it ends before the frames are scrubbed and handed on.
            crate::sharing::publish_given(token, vm);
            wait_for_copies(vm.id);
        }
        // Refusals are the guest's to report; a VM that gave or took everything it asked for
        // in a batch that leaves it at a new low or high is not worth a line per batch (a
        // 128 MiB move is 64 calls), so only a refused batch is logged here.
        if result.status != Status::Ok {
            info!(
                "balloon: VM {} {}: {} page(s) done, then {:?}; it has {} KiB",
                vm.name,
                if giving {
                    "gives back"
                } else {
                    "asks for more"
                },
                result.done,
                result.status,
                vm.balloon.pages() * PAGE_SIZE / 1024
            );
        }
        (result.status, Some(result.done), None)
    }

    /// BALLOON_SET_TARGET of a caller (a driver domain if `driver`): VM `id`'s target to
    /// `pages` (`balloon::targets::check_set_target`). A refusal is not logged (a guest must
    /// not flood the log); a target set is, and the VM hears `TARGET_INTID` on this trap's
    /// exit.
    fn balloon_set_target(&mut self, driver: bool, id: u64, pages: u64) -> Status {
        let mut targets = TARGETS.lock();
        let memory = |vm: &crate::vm::Vm| {
            let ram_pages = vm.ram_bytes / PAGE_SIZE;
            VmMemory {
                pages: vm.balloon.pages(),
                target: targets.get(vm.id).map_or(ram_pages, |t| t.pages(ram_pages)),
            }
        };
        let live = |vm: &&crate::vm::Vm| vm.stop.is_none();
        let target = u16::try_from(id).ok().and_then(|id| {
            self.vms
                .iter()
                .flatten()
                .filter(live)
                .find(|vm| vm.id == id && id != 0)
        });
        let free = free_for_targets(
            self.balloon_credit + self.balloon_in_transit,
            self.vms
                .iter()
                .flatten()
                .filter(live)
                .filter(|vm| target.is_none_or(|t| t.id != vm.id))
                .map(memory),
        );
        let status = check_set_target(driver, target.map(memory), pages, free);
        if status != Status::Ok {
            return status;
        }
        let Some(vm) = target else {
            return Status::InvalidArgument;
        };
        let (name, vm_id) = (vm.name.clone(), vm.id);
        // Logged only when it changes: setting the same target again is a no-op.
        if targets.get_mut(vm_id).is_some_and(|entry| entry.set(pages)) {
            NEXT_DUE.store(0, Ordering::Relaxed);
            info!(
                "balloon: VM {name}'s target set to {} KiB by a driver domain",
                pages * PAGE_SIZE / 1024
            );
        }
        Status::Ok
    }

    /// The trap exit's work when [`targets_due`]: loads the schedules on the first call (and
    /// starts their clock), applies every point due at counter value `now`, and returns the
    /// first vCPU of each live VM whose target changed since it was last told (the caller
    /// raises `TARGET_INTID` there once the HV lock is dropped).
    pub fn apply_balloon_targets(&self, now: u64, frequency: u64) -> Vec<VcpuId> {
        let mut targets = TARGETS.lock();
        if !targets.started {
            targets.started = true;
            targets.start_ticks = now;
            for vm in self.vms.iter().flatten() {
                // The bundle parser validated the setting.
                let schedule = Bundle::balloon_schedule_of(vm.settings);
                targets.load(vm.id, schedule);
            }
        }
        let ticks_per_ms = (frequency / 1000).max(1);
        let now_ms = now.saturating_sub(targets.start_ticks) / ticks_per_ms;
        let mut tell = Vec::new();
        for vm in self.vms.iter().flatten().filter(|vm| vm.stop.is_none()) {
            let Some(entry) = targets.get_mut(vm.id) else {
                continue;
            };
            if entry.apply_due(now_ms) {
                info!(
                    "balloon: VM {}'s target is {} KiB (its balloon_schedule)",
                    vm.name,
                    entry.pages(0) * PAGE_SIZE / 1024
                );
            }
            if entry.notify {
                entry.notify = false;
                tell.extend(vm.vcpus.first().copied());
            }
        }
        let next = targets.next_due_ms().map_or(u64::MAX, |ms| {
            targets
                .start_ticks
                .saturating_add(ms.saturating_mul(ticks_per_ms))
        });
        NEXT_DUE.store(next, Ordering::Relaxed);
        tell
    }

    /// Sets aside, from the credit, the frames a BALLOON_POPULATE of `count` pages can map at
    /// most (see [`Fresh`]).
    pub fn balloon_reserve(&mut self, count: u64) -> Fresh {
        let mut fresh = Fresh::default();
        for _ in 0..populate_reserve(count, self.balloon_credit) {
            let Some(pa) = self.frames.alloc(1, 1) else {
                break;
            };
            fresh.frames.push(pa);
            self.balloon_credit -= 1;
            self.balloon_in_transit += 1;
        }
        fresh
    }

    /// The frames of a populate batch it did not map: back to the allocator and the credit.
    pub fn balloon_unreserve(&mut self, fresh: &mut Fresh) {
        for pa in fresh.frames.drain(..) {
            self.balloon_in_transit = self.balloon_in_transit.saturating_sub(1);
            if self.frames.free(pa, 1).is_ok() {
                self.balloon_credit += 1;
            }
        }
    }

    /// The frames of a balloon batch, scrubbed: back to the frame allocator, and each one the
    /// allocator takes back grows the credit.
    pub fn balloon_freed(&mut self, scrub: &Scrub) {
        self.balloon_in_transit = self.balloon_in_transit.saturating_sub(scrub.len() as u64);
        for &pa in &scrub.ram {
            if self.frames.free_page_within(pa).is_ok() {
                self.balloon_credit += 1;
            }
        }
        for &pa in &scrub.populated {
            if self.frames.free(pa, 1).is_ok() {
                self.balloon_credit += 1;
            }
        }
    }

    /// The free-memory line: frames free in the allocator and the balloon's credit.
    pub fn log_free_memory(&self) {
        // A warm spare of RAM (`spare`) is allocated: neither free nor credit, printed apart.
        info!(
            "balloon: free memory {} KiB, credit {} KiB, warm spare {} KiB",
            self.frames.free_pages() as u64 * PAGE_SIZE / 1024,
            self.balloon_credit * PAGE_SIZE / 1024,
            self.spare_bytes() / 1024
        );
    }
}
