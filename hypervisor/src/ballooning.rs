//! The balloon in the running hypervisor: the balloon calls (the rules are the library's
//! `balloon`) carried out on a VM's stage 2, the frame allocator, the SMMU and the balloon's
//! credit, and the free-memory line it logs.
//!
//! Where the frames go: a page a VM gives back is scrubbed and returned to the frame allocator
//! at once (cut out of the VM's RAM allocation), and the credit grows by one; a populated page
//! is a fresh frame from the allocator, zeroed, and the credit shrinks by one. So the credit is
//! what the balloon may still hand out, the frames themselves live in the free memory, and
//! "free memory + credit" is what the log line shows stay constant while memory moves.

use alloc::vec::Vec;

use hypervisor::balloon::{read_batch, BalloonEnv, BatchResult};
use hypervisor::grant::{GrantTables, VmId};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::stage2::Stage2;
use log::info;
use shared_abi::hypercall::{self, Status};
use shared_abi::layout::{start_info_gpa, GUEST_RAM_BASE, PAGE_SIZE};

use crate::arch::mem::{scrub_frame, PhysTableMemory};
use crate::iommu::Iommu;
use crate::machine::Hv;
use crate::vm::RAM_ATTRS;

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
    credit: &'a mut u64,
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
        scrub_frame(pa);
        if self.frames.free_page_within(pa).is_ok() {
            *self.credit += 1;
        }
    }

    fn give_frame(&mut self, pa: u64) {
        scrub_frame(pa);
        if self.frames.free(pa, 1).is_ok() {
            *self.credit += 1;
        }
    }

    fn take_frame(&mut self) -> Option<u64> {
        if *self.credit == 0 {
            return None;
        }
        let pa = self.frames.alloc(1, 1)?;
        scrub_frame(pa);
        *self.credit -= 1;
        Some(pa)
    }

    fn heap_low(&self) -> bool {
        crate::arch::heap::free_bytes() < crate::boot::HEAP_RESERVE
    }
}

impl Hv {
    /// A balloon call of VM `vm_index` (checked by the library's rules): x0's status, x1, x2.
    pub fn balloon_call(
        &mut self,
        vm_index: usize,
        function: u64,
        x1: u64,
        x2: u64,
    ) -> (Status, Option<u64>, Option<u64>) {
        let event_page = self
            .vms
            .get(vm_index)
            .and_then(Option::as_ref)
            .and_then(|vm| self.sharing.events.event_page(vm.id));
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
            credit: &mut self.balloon_credit,
        };
        let giving = function == hypercall::BALLOON_RELEASE;
        let result: BatchResult = if giving {
            vm.balloon.release(&mut machine, ram_pa, &pages)
        } else {
            vm.balloon.populate(&mut machine, &pages)
        };
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

    /// The free-memory line: frames free in the allocator and the balloon's credit.
    pub fn log_free_memory(&self) {
        info!(
            "balloon: free memory {} KiB, credit {} KiB",
            self.frames.free_pages() as u64 * PAGE_SIZE / 1024,
            self.balloon_credit * PAGE_SIZE / 1024
        );
    }
}
