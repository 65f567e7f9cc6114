//! VMs and vCPUs: creating a VM from its bundle entry (RAM, stage-2 table, image, start-info page),
//! resetting it, and tearing it down.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use hypervisor::balloon::VmBalloon;
use hypervisor::esr::MmioAccess;
use hypervisor::mm::frame_alloc::FrameAllocator;
pub use hypervisor::mm::ram_map::RAM_ATTRS;
use hypervisor::mm::ram_map::{ram_pieces, SharedCode};
use hypervisor::mm::stage2::Stage2;
use hypervisor::restart::{CrashHistory, Mark, Timeline};
use hypervisor::sched::VcpuId;
use hypervisor::vgic::VirqQueue;
use shared_abi::bundle::{VmKind, VmSpec};
use shared_abi::layout::{start_info_gpa, GUEST_RAM_BASE, PAGE_SIZE};
use shared_abi::start_info::{StartInfo, StartInfoError};
use shared_abi::wire::WireError;

use crate::arch::cpu::{self, El1Context, FpContext};
use crate::arch::gic::{self, VgicContext};
use crate::arch::mem::{scrub_frame, GuestRam, PhysTableMemory, VmRam};
use crate::arch::vectors::TrapFrame;
use crate::iommu::Iommu;

/// Why a VM is stopping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopKind {
    PowerOff,
    Reset,
    Killed(String),
}

pub struct Vm {
    pub id: u16,
    pub name: String,
    pub kind: VmKind,
    pub vmid: u16,
    pub stage2: Stage2,
    pub ram: VmRam,
    pub ram_bytes: u64,
    pub image: &'static [u8],
    /// Its image's read-only part, mapped read-only from the hypervisor's copy that every VM of
    /// the image maps (`hypervisor::mm::ram_map`); `None` for an image without the header.
    pub code: Option<SharedCode>,
    pub settings: &'static str,
    pub vcpus: Vec<VcpuId>,
    pub stop: Option<StopKind>,
    pub boots: u32,
    /// VMs connected to this one (bit i = VM id i), from the bundle's back-end links; written to
    /// the start-info page on every boot.
    pub peers: u64,
    /// Routing id of the PCI function passed through to this VM (told in start-info).
    pub passthrough: Option<u16>,
    /// What it gave back to the balloon and what the balloon gave it.
    pub balloon: VmBalloon,
    /// Its recent crashes (driver domains are restarted after one, see `restart`).
    pub crashes: CrashHistory,
    /// How long its next incarnation's first vCPU waits before it starts (the back-off of a
    /// restart after a crash).
    pub start_delay_ms: u64,
    /// The restart in progress, timed from the crash notice (printed when its first vCPU is
    /// made runnable again).
    pub timeline: Option<Timeline>,
}

/// What switching a vCPU in needs of its VM, kept with the vCPU so that a context switch
/// takes only the vCPU's lock (and the scheduler's), never the HV lock.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRun {
    pub vm_id: u16,
    pub vmid: u16,
    pub stage2_root: u64,
    /// The VMID was used by an earlier VM: flush its TLB entries before this vCPU first runs.
    pub flush_vmid: bool,
    /// Its VM is stopping (or stopped): it must not run again until a restart clears this.
    pub stopping: bool,
}

pub struct Vcpu {
    pub index: u32,
    pub run: VcpuRun,
    pub frame: TrapFrame,
    pub el1: El1Context,
    pub fp: FpContext,
    pub vgic: VgicContext,
    pub virqs: VirqQueue,
    /// The device access this vCPU trapped on and waits for the device model to answer (its
    /// request is in the slot of this vCPU's index); `None` when it waits for nothing.
    pub io: Option<MmioAccess>,
}

/// SPSR for entering EL1h with D, A, I and F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;

impl Vcpu {
    pub fn new(index: u32, run: VcpuRun) -> Self {
        Vcpu {
            index,
            run,
            frame: TrapFrame::default(),
            el1: El1Context::reset(),
            fp: FpContext::default(),
            vgic: VgicContext::default(),
            virqs: VirqQueue::new(),
            io: None,
        }
    }

    /// Architectural reset, then entry at `entry` with x0 = `arg` (boot, PSCI CPU_ON, reset).
    pub fn reset(&mut self, entry: u64, arg: u64) {
        self.release_hardware_interrupts();
        self.frame = TrapFrame::default();
        self.frame.elr = entry;
        self.frame.spsr = SPSR_EL1H_MASKED;
        self.frame.x[0] = arg;
        self.el1 = El1Context::reset();
        self.fp = FpContext::default();
        self.vgic = VgicContext::default();
        self.virqs.clear();
        // A request outstanding from before the reset is abandoned.
        self.io = None;
    }

    /// Drops every virtual interrupt this (not running) vCPU holds and deactivates the physical
    /// interrupts linked to them, so a device line handed to a vCPU that then switches off or
    /// resets is not left active forever. INTx is level-triggered: a device still asserting it
    /// interrupts again.
    pub fn release_hardware_interrupts(&mut self) {
        for physical in self.virqs.take_hardware(&mut self.vgic.lrs) {
            gic::deactivate(physical);
        }
    }
}

/// Maps the runs `(first page, pages)` of the RAM at `ram_pa` into `stage2`, and the shared
/// code over the start of it (`hypervisor::mm::ram_map::ram_pieces`); stops at the first
/// mapping that fails.
fn map_pieces(
    stage2: &mut Stage2,
    tables: &mut PhysTableMemory,
    ram_pa: u64,
    runs: &[(u64, u64)],
    code: Option<SharedCode>,
) -> Result<(), hypervisor::mm::stage2::Stage2Error> {
    for piece in ram_pieces(ram_pa, runs, code) {
        stage2.map(tables, piece.ipa, piece.pa, piece.bytes, piece.attrs)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(
        "not enough free RAM for {} MiB (give QEMU more with -m, or shrink the topology)",
        needed >> 20
    )]
    OutOfMemory { needed: u64 },
    #[error("stage-2 setup failed: {0}")]
    Stage2(&'static str),
    #[error("start-info page: {0}")]
    StartInfo(StartInfoError),
}

impl Vm {
    /// Allocates RAM (2 MiB aligned, so stage-2 uses blocks past the shared code's block),
    /// builds the stage-2 table, and loads the image and start-info page. `peers` is the VM's
    /// peer bitmap from [`Bundle::peers_of`](shared_abi::bundle::Bundle::peers_of); `code` is
    /// the hypervisor's copy of its image's read-only part, if the image has one.
    pub fn create(
        spec: &VmSpec<'static>,
        peers: u64,
        vmid: u16,
        code: Option<SharedCode>,
        frames: &mut FrameAllocator,
    ) -> Result<Vm, CreateError> {
        let ram = VmRam::alloc(frames, spec.ram_bytes).ok_or(CreateError::OutOfMemory {
            needed: spec.ram_bytes,
        })?;
        let mut tables = PhysTableMemory { frames };
        let mut stage2 = match Stage2::new(&mut tables) {
            Ok(s) => s,
            Err(_) => {
                ram.free(tables.frames, &[(0, spec.ram_bytes / PAGE_SIZE)]);
                return Err(CreateError::Stage2("no frame for the root table"));
            }
        };
        let whole = [(0, spec.ram_bytes / PAGE_SIZE)];
        if map_pieces(&mut stage2, &mut tables, ram.pa(), &whole, code).is_err() {
            stage2.destroy(&mut tables);
            ram.free(tables.frames, &[(0, spec.ram_bytes / PAGE_SIZE)]);
            return Err(CreateError::Stage2("mapping RAM failed"));
        }
        let mut vm = Vm {
            id: spec.id,
            name: String::from(spec.name),
            kind: spec.kind,
            vmid,
            stage2,
            ram,
            ram_bytes: spec.ram_bytes,
            image: spec.image,
            code,
            settings: spec.settings,
            vcpus: Vec::new(),
            stop: None,
            boots: 0,
            peers,
            passthrough: spec.passthrough.map(|bdf| bdf.routing_id()),
            balloon: VmBalloon::new(spec.ram_bytes, code.map_or(0, |c| c.bytes)),
            crashes: CrashHistory::default(),
            start_delay_ms: 0,
            timeline: None,
        };
        if let Err(e) = vm.load_memory(spec.vcpus, false) {
            let mut tables = PhysTableMemory { frames };
            vm.stage2.destroy(&mut tables);
            vm.ram
                .free(tables.frames, &[(0, spec.ram_bytes / PAGE_SIZE)]);
            return Err(CreateError::StartInfo(e));
        }
        Ok(vm)
    }

    /// (Re)initialises RAM: zeroed, the image at the base (past its shared read-only part), the
    /// start-info page at the top. Fails only if the start-info does not fit its page, which
    /// bundle validation rules out; a restart that fails anyway stops the VM instead of the
    /// hypervisor. `zeroed`: the RAM is a warm spare, zeroed and cleaned from the caches
    /// already, so only what is written here is cleaned.
    pub fn load_memory(&mut self, vcpus: u32, zeroed: bool) -> Result<(), StartInfoError> {
        self.boots += 1;
        let info_offset = start_info_gpa(self.ram_bytes) - GUEST_RAM_BASE;
        let info = StartInfo {
            vm_id: self.id,
            name: &self.name,
            kind: self.kind,
            vcpus,
            ram_base: GUEST_RAM_BASE,
            ram_bytes: self.ram_bytes,
            settings: self.settings,
            boot_count: self.boots,
            peers: self.peers,
            passthrough: self.passthrough,
        };
        // Built in private memory first: guest RAM is only ever written through raw copies.
        let mut page = vec![0u8; PAGE_SIZE as usize];
        info.write_to(&mut page)?;
        let ram = self.ram.view();
        if !zeroed {
            ram.zero();
        }
        if let Some(t) = self.timeline.as_mut() {
            t.mark(Mark::Zero, cpu::counter());
        }
        // The image's read-only part is mapped from the shared copy (`hypervisor::mm::ram_map`):
        // only the rest of it is loaded into the VM's own RAM.
        let code_bytes = self.code.map_or(0, |c| c.bytes);
        let own_image = self.image.get(code_bytes as usize..).unwrap_or_default();
        let loaded = ram.write(code_bytes, own_image) && ram.write(info_offset, &page);
        if !loaded {
            // Bundle validation rules this out (the image and the page fit the RAM).
            return Err(StartInfoError::Wire(WireError::TooShort {
                format: "VM RAM for its image and start-info page",
                len: self.ram_bytes as usize,
                need: self
                    .image
                    .len()
                    .max(info_offset as usize + PAGE_SIZE as usize),
            }));
        }
        if zeroed {
            self.ram
                .sync_range_for_execution(code_bytes, own_image.len() as u64);
            self.ram.sync_range_for_execution(info_offset, PAGE_SIZE);
        } else {
            self.ram.sync_for_execution();
        }
        if let Some(t) = self.timeline.as_mut() {
            t.mark(Mark::Load, cpu::counter());
        }
        Ok(())
    }

    /// True if `ipa` is in its image's shared code (mapped read-only: a write there faults).
    pub fn in_shared_code(&self, ipa: u64) -> bool {
        ipa.checked_sub(GUEST_RAM_BASE)
            .is_some_and(|offset| offset < self.balloon.code_bytes())
    }

    /// The VM's RAM, for access while its vCPUs may run (atomics and copies only).
    pub fn ram(&self) -> GuestRam<'_> {
        self.ram.view().without_given(&self.balloon)
    }

    /// Unmaps the RAM range from stage 2 (what is left of it: pages given back to the balloon
    /// are unmapped already) and invalidates its TLB entries under the VM's VMID (by IPA, then
    /// the VMID's stage-1 entries). False if the unmap failed.
    fn unmap_ram(&mut self, tables: &mut PhysTableMemory, iommu: &mut Iommu) -> bool {
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let (vmid, root) = (self.vmid, self.stage2.root_pa());
        let unmapped = self
            .stage2
            .unmap_present(
                tables,
                GUEST_RAM_BASE,
                self.ram_bytes,
                &mut |ipa, size| pieces.push((ipa, size)),
                &mut |ipa, size| iommu.invalidate_ipas(vmid, root, &[(ipa, size)]),
            )
            .is_ok();
        iommu.invalidate_ipas(vmid, root, &pieces);
        unmapped
    }

    /// The runs `(first page, pages)` of its RAM it still owns (all of it unless it gave pages
    /// back to the balloon).
    pub fn kept_ram_runs(&self) -> Vec<(u64, u64)> {
        self.balloon.kept_runs()
    }

    /// Unmaps the pages the balloon populated for it, scrubs them and frees their frames;
    /// returns how many (they go back to the balloon's credit). For a stop or a restart: the
    /// next incarnation starts with its RAM from the topology only.
    pub fn drop_populated(&mut self, frames: &mut FrameAllocator, iommu: &mut Iommu) -> u64 {
        let populated = self.balloon.take_populated();
        let (vmid, root) = (self.vmid, self.stage2.root_pa());
        let mut tables = PhysTableMemory { frames };
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for &(gpa, _) in &populated {
            let _ = self.stage2.unmap(
                &mut tables,
                gpa,
                PAGE_SIZE,
                &mut |ipa, size| pieces.push((ipa, size)),
                &mut |ipa, size| iommu.invalidate_ipas(vmid, root, &[(ipa, size)]),
            );
        }
        iommu.invalidate_ipas(vmid, root, &pieces);
        for &(_, pa) in &populated {
            scrub_frame(pa);
            let _ = tables.frames.free(pa, 1);
        }
        populated.len() as u64
    }

    /// Gives the VM fresh RAM (for a restart while peers still map frames of the old RAM, which
    /// must stay untouched until they unmap): the stage-2 RAM range is remapped to the new frames
    /// and the old translations are invalidated. Returns the old RAM's PA, which the caller now
    /// owns; `None` (nothing changed) when there is no free RAM or the remap fails.
    pub fn replace_ram(&mut self, frames: &mut FrameAllocator, iommu: &mut Iommu) -> Option<u64> {
        let new = VmRam::alloc(frames, self.ram_bytes)?;
        match self.replace_ram_with(new, frames, iommu) {
            Ok(old_pa) => Some(old_pa),
            Err(new) => {
                new.free(frames, &[(0, self.ram_bytes / PAGE_SIZE)]);
                None
            }
        }
    }

    /// Like [`Vm::replace_ram`], with the given RAM (of the VM's size: a fresh allocation or a
    /// warm spare); gives it back (`Err`) if the remap fails.
    pub fn replace_ram_with(
        &mut self,
        new: VmRam,
        frames: &mut FrameAllocator,
        iommu: &mut Iommu,
    ) -> Result<u64, VmRam> {
        let mut tables = PhysTableMemory { frames };
        let whole = [(0, self.ram_bytes / PAGE_SIZE)];
        let remapped = self.unmap_ram(&mut tables, iommu)
            && map_pieces(&mut self.stage2, &mut tables, new.pa(), &whole, self.code).is_ok();
        if !remapped {
            // Put back what is left of the old RAM (never the pages given back to the balloon:
            // their frames are someone else's now); if even that fails the VM cannot run again,
            // and its stage-2 simply lacks RAM (any access is a fault that kills it).
            let kept = self.balloon.kept_runs();
            let _ = map_pieces(
                &mut self.stage2,
                &mut tables,
                self.ram.pa(),
                &kept,
                self.code,
            );
            return Err(new);
        }
        Ok(core::mem::replace(&mut self.ram, new).into_pa())
    }

    /// Unmaps the VM's RAM and frees its tables; frees the RAM too when `free_ram`, otherwise a
    /// peer still maps some of it and its PA is returned: the caller keeps it. Its VMID is
    /// released by the caller. The TLB entries of the unmapped RAM are invalidated by IPA under
    /// the VM's own VMID, so the frames can go to another VM at once.
    #[must_use]
    pub fn destroy(
        mut self,
        frames: &mut FrameAllocator,
        iommu: &mut Iommu,
        free_ram: bool,
    ) -> Option<u64> {
        let mut tables = PhysTableMemory { frames };
        self.unmap_ram(&mut tables, iommu);
        self.stage2.destroy(&mut tables);
        if free_ram {
            let kept = self.balloon.kept_runs();
            self.ram.free(tables.frames, &kept);
            None
        } else {
            Some(self.ram.into_pa())
        }
    }
}
