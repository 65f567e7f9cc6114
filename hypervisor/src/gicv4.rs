//! GICv4 direct injection in the running machine (issue 15): the boot-time probe that picks
//! vLPIs or INTx for the NIC and says which, and the physical ITS brought up for vLPIs: its
//! device, collection and vPE tables and command queue, LPIs on every redistributor (the
//! doorbells are physical LPIs), one collection per pCPU. The order of things is
//! `hypervisor::its::bringup`'s (host-tested); the registers are `arch::its`'s and `arch::gic`'s.
//!
//! Then the vPEs of the NIC owner's vCPUs (step 2, the logic in `hypervisor::its::vpe`): each
//! vCPU gets a vPE with a zeroed 64 KiB-aligned virtual pending table and a doorbell LPI, the
//! VM one vLPI configuration table; VMAPP at VM start, VMAPP V = 0 at its stop (and again
//! VMAPP at a restart); GICR_VPENDBASER.Valid set on vCPU entry and cleared on exit with
//! PendingLast kept for the WFI decision; VMOVP when a vCPU enters on another pCPU than its
//! vPE is mapped to; a doorbell wakes the vCPU.
//!
//! Then the NIC's MSI-X vectors (step 3, the checks and commands in `hypervisor::its::msi`):
//! MSIX_MAP ([`VmMsix`], the hypercall's machine side) maps the ITS's translation page at the
//! MSI window in the owner's stage 2 (which the SMMU walks for the device's writes), gives the
//! device an ITT and VMAPTIs each vector to the vPE of the owner's vCPU 0; the owner's stop
//! DISCARDs every event and unmaps the device and the window, so a new incarnation maps again
//! (docs/ARCHITECTURE.md, "GICv4 direct injection").
//!
//! The state is under [`STATE`], a leaf lock: it is taken inside the vCPU, scheduler or HV
//! locks (vCPU entry and exit run under a vCPU's lock) and nothing is locked while it is held
//! except `arch::gic`'s own leaf locks.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alloc::vec::Vec;

use hypervisor::dispatch::MsixControl;
use hypervisor::its::bringup::{
    direct_injection, physical_lpi_table_bytes, table_name, GicFeatures, Its, ItsFault, ItsHw,
    RedistributorLpis,
};
use hypervisor::its::msi::{self, Facts};
use hypervisor::its::vpe::{self, Residency, Vpe, VpeIds};
use hypervisor::its::{self, IttLayout, RdBase, GITS_TYPER, ITT_ALIGN};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::stage2::{Access, MapAttrs, MemType};
use hypervisor::pci::Bdf;
use hypervisor::sched::VcpuId;
use log::{error, info, warn};
use shared_abi::hypercall::Status;
use spin::Mutex;

use crate::arch::its::ItsMmio;
use crate::arch::mem::PhysTableMemory;
use crate::arch::{cpu, gic, mem, platform, MAX_PCPUS};
use crate::dtb::Machine;
use crate::machine::Hv;
use crate::vm::Vm;

const FRAME: u64 = 0x1000;
/// Priority of the doorbell LPIs: the hypervisor's other interrupts' (`arch::gic`).
const DOORBELL_PRIORITY: u8 = 0x80;

/// Direct injection is in service: the ITS came up (read without the lock on every vCPU switch).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The ITS and the vPEs.
static STATE: Mutex<Option<State>> = Mutex::new(None);
/// The vCPU (id + 1) whose vPE is resident on each pCPU's redistributor, 0 for none. Only
/// written by that pCPU.
static RESIDENT: [AtomicUsize; MAX_PCPUS] = [const { AtomicUsize::new(0) }; MAX_PCPUS];
/// VMOVPs sent (the first is logged, as evidence that moves happen; the rest would flood).
static MOVES: AtomicUsize = AtomicUsize::new(0);

/// The ITS in service for direct injection (its state is in [`STATE`]).
pub struct DirectInjection;

struct State {
    hw: ItsMmio,
    its: Its,
    /// Physical address of the ITS's frames (its translation page is what the MSI window maps).
    its_base: u64,
    /// Each pCPU's redistributor as the ITS names it (the MAPC, VMAPP and VMOVP target), by
    /// pCPU index; collection i is pCPU i's.
    targets: Vec<RdBase>,
    ids: VpeIds,
    vms: Vec<VmVpes>,
}

/// A VM's vPEs.
struct VmVpes {
    vm_id: u16,
    name: alloc::string::String,
    /// The VM's vLPI configuration table (written by the hypervisor only).
    config: (u64, u64),
    vpes: Vec<VcpuVpe>,
    /// VMAPP'd (between the VM's start and its stop).
    mapped: bool,
    /// The ITT of its device (allocated at the first MSIX_MAP, kept and zeroed across
    /// restarts: sized for the function's whole MSI-X table).
    itt: Option<(u64, IttLayout)>,
    /// The device's vectors mapped to its vPE (MSIX_MAP until the VM stops).
    msix: Option<MsixMapping>,
}

/// A device's MSI-X vectors delivered as vLPIs.
#[derive(Clone, Copy)]
struct MsixMapping {
    device_id: u32,
    vectors: u16,
}

/// One vCPU's vPE.
struct VcpuVpe {
    vcpu: VcpuId,
    vpe: Vpe,
    vpt_bytes: u64,
    residency: Residency,
    /// The pCPU whose redistributor the ITS has the vPE on (VMAPP, VMOVP).
    on: usize,
    /// A vLPI was pending when the vPE last left (GICR_VPENDBASER.PendingLast).
    pending_last: bool,
}

/// Zeroed frames for the GIC: `bytes` rounded up to whole frames, aligned to `align`. Never
/// freed: the ITS and the redistributors own them for the life of the machine.
fn alloc_zeroed(frames: &mut FrameAllocator, bytes: u64, align: u64) -> Option<u64> {
    let pages = bytes.div_ceil(FRAME).max(1);
    let pa = frames.alloc(pages as usize, (align / FRAME).max(1) as usize)?;
    for page in 0..pages {
        mem::scrub_frame(pa + page * FRAME);
    }
    Some(pa)
}

/// Probes the GIC for GICv4.0 direct injection and brings the ITS up if it is there; logs
/// which interrupt path the NIC gets and why. `None`: INTx.
pub fn probe(
    machine: &Machine,
    frames: &mut FrameAllocator,
    pcpus: usize,
) -> Option<DirectInjection> {
    let mut hw = machine.its.and_then(platform::its);
    let (lpis, id_bits, redistributor_vlpis) = gic::lpi_features(pcpus);
    let features = GicFeatures {
        its_typer: hw.as_mut().map(|hw| hw.read64(GITS_TYPER)),
        lpis,
        id_bits,
        redistributor_vlpis,
    };
    let typer = match direct_injection(&features) {
        Ok(typer) => typer,
        Err(why) => {
            info!("no vLPI direct injection: {why}; the NIC's interrupts use INTx");
            return None;
        }
    };
    let mut hw = hw?;
    match bring_up(&mut hw, typer, frames, pcpus) {
        Ok((its, targets)) => {
            info!(
                "GICv4 ITS found: vLPI direct injection available (ITS at {:#x}, {} collection(s), \
                 one per pCPU, LPIs on every redistributor)",
                machine.its.unwrap_or(0),
                targets.len()
            );
            for placed in its.tables.iter().flatten() {
                info!(
                    "ITS {} table: {} KiB at {:#x}",
                    table_name(placed.table_type),
                    placed.bytes >> 10,
                    placed.addr
                );
            }
            *STATE.lock() = Some(State {
                hw,
                its,
                its_base: machine.its.unwrap_or(0),
                targets,
                ids: VpeIds::default(),
                vms: Vec::new(),
            });
            ACTIVE.store(true, Ordering::Release);
            Some(DirectInjection)
        }
        Err(why) => {
            error!("GICv4 ITS bring-up failed: {why}; the NIC's interrupts use INTx");
            None
        }
    }
}

/// Why the bring-up stopped: the ITS's own fault or a redistributor's.
#[derive(Debug, thiserror::Error)]
enum BringUpError {
    #[error(transparent)]
    Its(#[from] ItsFault),
    #[error("redistributor of pCPU {cpu}: {why}")]
    Redistributor { cpu: usize, why: &'static str },
}

fn bring_up(
    hw: &mut ItsMmio,
    typer: its::Typer,
    frames: &mut FrameAllocator,
    pcpus: usize,
) -> Result<(Its, Vec<RdBase>), BringUpError> {
    let collections = pcpus as u32;
    let mut its = Its::bring_up(hw, typer, collections, &mut |bytes, align| {
        alloc_zeroed(frames, bytes, align)
    })?;
    // Every LPI but the vPEs' doorbells stays disabled. The doorbells are enabled here, before
    // any redistributor enables LPIs, so no configuration cache can hold an older byte.
    let (config_bytes, pending_bytes) = physical_lpi_table_bytes();
    let config = alloc_zeroed(frames, config_bytes, FRAME)
        .ok_or(ItsFault::OutOfMemory("LPI configuration table"))?;
    for (offset, byte) in vpe::doorbell_config(DOORBELL_PRIORITY).map_err(ItsFault::from)? {
        crate::arch::its::write_table_byte(config + offset, byte);
    }
    let mut targets = Vec::with_capacity(pcpus);
    let mut commands = Vec::with_capacity(3 * pcpus);
    for cpu in 0..pcpus {
        let redistributor = |why| BringUpError::Redistributor { cpu, why };
        let pending = alloc_zeroed(frames, pending_bytes, 0x1_0000)
            .ok_or(ItsFault::OutOfMemory("LPI pending table"))?;
        let lpis = RedistributorLpis::new(config, pending).map_err(ItsFault::from)?;
        gic::enable_lpis(cpu, lpis).map_err(redistributor)?;
        let (number, rd_base) =
            gic::redistributor_target(cpu).ok_or(redistributor("no GICR_TYPER"))?;
        let target = typer
            .rdbase(u64::from(number), rd_base)
            .map_err(ItsFault::from)?;
        let icid = typer.check_collection(cpu as u16).map_err(ItsFault::from)?;
        commands.push(its::mapc(icid, Some(target)).map_err(ItsFault::from)?);
        commands.push(its::sync(target).map_err(ItsFault::from)?);
        commands.push(its::invall(icid));
        targets.push(target);
    }
    its.run(hw, &commands)?;
    Ok((its, targets))
}

/// Why a VM got no vPEs.
#[derive(Debug, thiserror::Error)]
enum VpeSetupError {
    #[error(transparent)]
    Vpe(#[from] vpe::VpeError),
    #[error(transparent)]
    Its(#[from] ItsFault),
    #[error("no memory for its {0}")]
    OutOfMemory(&'static str),
}

/// Gives each of VM `vm_id`'s vCPUs a vPE (the NIC owner's, at boot) and maps them. Without
/// direct injection, nothing. A failure is logged and leaves the VM on INTx only.
pub fn add_vm(vm_id: u16, name: &str, vcpus: &[VcpuId], frames: &mut FrameAllocator) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    match state.add_vm(vm_id, name, vcpus, frames) {
        Ok(()) => {
            let vm = state.vms.last();
            for v in vm.iter().flat_map(|vm| vm.vpes.iter()) {
                info!(
                    "vPE {} for {name} vCPU id {}: virtual pending table at {:#x}, doorbell \
                     LPI {}",
                    v.vpe.id,
                    v.vcpu,
                    v.vpe.vpt,
                    vpe::doorbell_of(v.vpe.id).unwrap_or(0)
                );
            }
            if let Some(vm) = vm {
                info!(
                    "{name}: {} vPE(s) mapped (VMAPP), vLPI configuration table at {:#x}",
                    vm.vpes.len(),
                    vm.config.0
                );
            }
        }
        Err(why) => error!("{name}: no vPEs ({why}); its NIC stays on INTx"),
    }
}

impl State {
    fn add_vm(
        &mut self,
        vm_id: u16,
        name: &str,
        vcpus: &[VcpuId],
        frames: &mut FrameAllocator,
    ) -> Result<(), VpeSetupError> {
        let ((vpt_bytes, vpt_align), (config_bytes, config_align)) = vpe::table_sizes();
        let config = alloc_zeroed(frames, config_bytes, config_align)
            .ok_or(VpeSetupError::OutOfMemory("vLPI configuration table"))?;
        let mut vpes = Vec::with_capacity(vcpus.len());
        for &vcpu in vcpus {
            let id = self.ids.alloc()?;
            let vpt = alloc_zeroed(frames, vpt_bytes, vpt_align)
                .ok_or(VpeSetupError::OutOfMemory("virtual pending table"))?;
            let vpe = Vpe { id, vpt };
            vpes.push(VcpuVpe {
                vcpu,
                vpe,
                vpt_bytes,
                residency: Residency::new(config, vpt).map_err(vpe::VpeError::from)?,
                on: 0,
                pending_last: false,
            });
        }
        self.vms.push(VmVpes {
            vm_id,
            name: name.into(),
            config: (config, config_bytes),
            vpes,
            mapped: false,
            itt: None,
            msix: None,
        });
        let index = self.vms.len() - 1;
        self.map(index)?;
        Ok(())
    }

    /// VMAPP for every vPE of VM `index`, each to the redistributor it was last on.
    fn map(&mut self, index: usize) -> Result<(), ItsFault> {
        let vm = &self.vms[index];
        let list: Vec<(Vpe, RdBase)> = vm
            .vpes
            .iter()
            .filter_map(|v| Some((v.vpe, *self.targets.get(v.on)?)))
            .collect();
        let commands = vpe::start_commands(&list)?;
        self.its.run(&mut self.hw, &commands)?;
        self.vms[index].mapped = true;
        Ok(())
    }

    /// VMAPP V = 0 for every vPE of VM `index`, then its tables zeroed for the next start.
    fn unmap(&mut self, index: usize) -> Result<(), ItsFault> {
        let vm = &mut self.vms[index];
        if !vm.mapped {
            return Ok(());
        }
        vm.mapped = false;
        // The device's events first (an MSI arriving now translates to nothing and is
        // dropped), then the vPEs they pointed at.
        let msix = vm.msix.take();
        let ids: Vec<u16> = vm.vpes.iter().map(|v| v.vpe.id).collect();
        let mut commands = match msix {
            Some(m) => msi::unmap_commands(m.device_id, m.vectors)?,
            None => Vec::new(),
        };
        commands.extend(vpe::stop_commands(&ids)?);
        let result = self.its.run(&mut self.hw, &commands);
        if let Some(m) = msix {
            info!(
                "{}: NIC vectors unmapped (DISCARD x {}, MAPD V = 0)",
                self.vms[index].name, m.vectors
            );
        }
        // The ITS no longer writes them (or is out of service and writes nothing): the next
        // incarnation starts with no vLPI pending or enabled.
        let vm = &mut self.vms[index];
        for v in vm.vpes.iter_mut() {
            scrub(v.vpe.vpt, v.vpt_bytes);
            v.pending_last = false;
        }
        scrub(vm.config.0, vm.config.1);
        if let Some((pa, layout)) = vm.itt {
            scrub(pa, layout.bytes);
        }
        result
    }

    fn vpe_mut(&mut self, vcpu: VcpuId) -> Option<(&mut VcpuVpe, bool)> {
        self.vms.iter_mut().find_map(|vm| {
            let mapped = vm.mapped;
            vm.vpes
                .iter_mut()
                .find(|v| v.vcpu == vcpu)
                .map(|v| (v, mapped))
        })
    }
}

fn scrub(pa: u64, bytes: u64) {
    for page in 0..bytes.div_ceil(FRAME) {
        mem::scrub_frame(pa + page * FRAME);
    }
}

/// VM `vm_id` stops (or restarts): its vPEs are unmapped and their tables zeroed.
pub fn vm_stopped(vm_id: u16) {
    with_vm(vm_id, |state, index| {
        let name = state.vms[index].name.clone();
        match state.unmap(index) {
            Ok(()) => info!("{name}: vPEs unmapped (VMAPP V = 0)"),
            Err(why) => error!("{name}: unmapping its vPEs failed: {why}"),
        }
    });
}

/// VM `vm_id` starts again after a restart: its vPEs are mapped again.
pub fn vm_started(vm_id: u16) {
    with_vm(vm_id, |state, index| {
        let name = state.vms[index].name.clone();
        match state.map(index) {
            Ok(()) => info!("{name}: vPEs mapped again (VMAPP)"),
            Err(why) => error!("{name}: mapping its vPEs failed: {why}; its NIC stays on INTx"),
        }
    });
}

fn with_vm(vm_id: u16, f: impl FnOnce(&mut State, usize)) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    if let Some(index) = state.vms.iter().position(|vm| vm.vm_id == vm_id) {
        f(state, index);
    }
}

/// vCPU `vcpu` is being loaded on pCPU `pcpu`: its vPE (if it has a mapped one) is moved to
/// this pCPU's redistributor if the ITS has it elsewhere (VMOVP), then made resident.
pub fn enter(vcpu: VcpuId, pcpu: usize) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    // An ITS out of service takes no more commands and its vLPIs go nowhere: the vCPUs run
    // without their vPEs (the fault was logged once, where it happened).
    if state.its.failed() {
        return;
    }
    let Some(target) = state.targets.get(pcpu).copied() else {
        return;
    };
    let Some((v, true)) = state.vpe_mut(vcpu) else {
        return;
    };
    let (id, residency, on) = (v.vpe.id, v.residency, v.on);
    if on != pcpu {
        let moved = vpe::move_commands(id, target)
            .map_err(ItsFault::from)
            .and_then(|commands| state.its.run(&mut state.hw, &commands));
        if let Err(why) = moved {
            // Resident on a redistributor the ITS does not send its vLPIs to would lose them;
            // the vCPU runs without its vPE (its NIC falls silent rather than misdelivered).
            error!("vPE {id}: VMOVP to pCPU {pcpu} failed: {why}");
            return;
        }
        if let Some((v, _)) = state.vpe_mut(vcpu) {
            v.on = pcpu;
        }
        if MOVES.fetch_add(1, Ordering::Relaxed) == 0 {
            info!("vPE {id}: moved to pCPU {pcpu}'s redistributor (VMOVP; later moves not logged)");
        }
    }
    match gic::vpe_enter(pcpu, residency.vpropbaser, residency.enter) {
        Ok(()) => RESIDENT[pcpu].store(vcpu + 1, Ordering::Relaxed),
        Err(why) => error!("vPE {id}: cannot make it resident: {why}"),
    }
}

/// The vCPU running on this pCPU is being saved: its vPE (if resident) leaves the
/// redistributor, and whether a vLPI was pending is kept for [`left_pending`].
pub fn leave() {
    let pcpu = cpu::pcpu_index();
    let Some(resident) = RESIDENT.get(pcpu) else {
        return;
    };
    let vcpu = match resident.swap(0, Ordering::Relaxed) {
        0 => return,
        n => n - 1,
    };
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    let Some((v, _)) = state.vpe_mut(vcpu) else {
        return;
    };
    match gic::vpe_leave(pcpu, v.residency.leave, |read| vpe::wait_out(read)) {
        Ok(Ok(pending)) => v.pending_last = pending,
        Ok(Err(why)) => {
            warn!("vPE {}: {why}", v.vpe.id);
            // Be safe for a WFI: look again at the next entry.
            v.pending_last = true;
        }
        Err(why) => warn!("vPE {}: {why}", v.vpe.id),
    }
}

/// Whether a vPE is resident on pCPU `pcpu` (its vCPU is loaded there). Its vLPIs then reach
/// the vCPU only once it runs again, and ring no doorbell.
pub fn resident_on(pcpu: usize) -> bool {
    RESIDENT
        .get(pcpu)
        .is_some_and(|r| r.load(Ordering::Relaxed) != 0)
}

/// Whether vCPU `vcpu`'s vPE had a vLPI pending when it last left (and forgets it): a vCPU
/// that trapped on WFI then must not stay blocked, since its doorbell rings only for vLPIs
/// that arrive while it is out.
pub fn left_pending(vcpu: VcpuId) -> bool {
    if !ACTIVE.load(Ordering::Acquire) {
        return false;
    }
    let mut guard = STATE.lock();
    guard
        .as_mut()
        .and_then(|state| state.vpe_mut(vcpu))
        .is_some_and(|(v, _)| core::mem::take(&mut v.pending_last))
}

/// The vCPU (and its VM's id) whose doorbell physical interrupt `raw` is, if it is one of a
/// mapped vPE.
pub fn doorbell(raw: u32) -> Option<(VcpuId, u16)> {
    let id = vpe::vpe_of_doorbell(raw)?;
    if !ACTIVE.load(Ordering::Acquire) {
        return None;
    }
    let guard = STATE.lock();
    guard.as_ref()?.vms.iter().find_map(|vm| {
        vm.vpes
            .iter()
            .find(|v| v.vpe.id == id)
            .map(|v| (v.vcpu, vm.vm_id))
    })
}

/// MSIX_MAP's machine side for the calling VM, under the HV lock (held by the caller from
/// [`MsixControl::facts`] to the end of [`MsixControl::map`]; the ITS state's leaf lock is
/// taken inside it).
pub struct VmMsix<'a> {
    pub hv: &'a mut Hv,
    pub vm_index: usize,
}

impl VmMsix<'_> {
    fn vm_id(&self) -> Option<u16> {
        Some(self.hv.vms.get(self.vm_index)?.as_ref()?.id)
    }
}

impl MsixControl for VmMsix<'_> {
    fn facts(&mut self) -> Facts {
        let vm_id = self.vm_id();
        let owned = self
            .hv
            .passthrough
            .as_ref()
            .filter(|p| Some(p.owner_id) == vm_id);
        let (direct_injection, mapped) = vm_id.map_or((false, 0), vectors_state);
        Facts {
            direct_injection,
            owned: owned.map(|p| p.bdf),
            table_size: owned.and_then(|p| p.msix_table_size()),
            mapped,
        }
    }

    fn map(&mut self, bdf: Bdf, vectors: u16) -> Result<(u64, u32), Status> {
        let table_size = self
            .hv
            .passthrough
            .as_ref()
            .and_then(|p| p.msix_table_size())
            .ok_or(Status::NotSupported)?;
        let hv = &mut *self.hv;
        let vm = hv
            .vms
            .get_mut(self.vm_index)
            .and_then(Option::as_mut)
            .ok_or(Status::Denied)?;
        msix_map_for(vm, bdf, vectors, table_size, &mut hv.frames)
    }
}

/// Whether VM `vm_id` can have vectors delivered as vLPIs now (the ITS in service, its vPEs
/// mapped), and how many are mapped already.
fn vectors_state(vm_id: u16) -> (bool, u16) {
    if !ACTIVE.load(Ordering::Acquire) {
        return (false, 0);
    }
    let guard = STATE.lock();
    let Some(state) = guard.as_ref() else {
        return (false, 0);
    };
    match state.vms.iter().find(|vm| vm.vm_id == vm_id) {
        Some(vm) => (
            vm.mapped && !vm.vpes.is_empty() && !state.its.failed(),
            vm.msix.map_or(0, |m| m.vectors),
        ),
        None => (false, 0),
    }
}

/// How the MSI window is mapped into the owner: the ITS's registers are Device memory, never
/// executable.
const WINDOW_ATTRS: MapAttrs = MapAttrs {
    mem: MemType::Device,
    access: Access::ReadWrite,
    executable: false,
};

/// Delivers vectors `0..vectors` of `bdf` (checked by `msi::check`) as vLPIs of `vm`'s vCPU 0:
/// the ITS's translation page mapped at the MSI window of `vm`'s stage 2 (the page and nothing
/// else of the ITS; the SMMU walks the same tables for the device), the vLPIs enabled in the
/// VM's configuration table, then MAPD (an ITT for the whole MSI-X table), VMAPTI per vector,
/// VINVALL and VSYNC. Returns the doorbell IOVA and the first vINTID. On any failure nothing
/// stays mapped.
pub fn msix_map_for(
    vm: &mut Vm,
    bdf: Bdf,
    vectors: u16,
    table_size: u16,
    frames: &mut FrameAllocator,
) -> Result<(u64, u32), Status> {
    let mut guard = STATE.lock();
    let state = guard.as_mut().ok_or(Status::NotSupported)?;
    let index = state
        .vms
        .iter()
        .position(|v| v.vm_id == vm.id && v.mapped)
        .ok_or(Status::NotSupported)?;
    let (page, doorbell_iova) = msi::translater(state.its_base);
    let window = msi::MSI_WINDOW_IPA;
    let device_id = u32::from(bdf.routing_id());
    let name = vm.name.clone();
    let fail = |what: &str, why: &dyn core::fmt::Display| {
        error!("{name}: MSIX_MAP of NIC {bdf} failed: {what}: {why}");
    };
    if let Err(why) = state.its.typer.check_device_id(device_id) {
        fail("DeviceID", &why);
        return Err(Status::NotSupported);
    }
    let itt = match state.vms[index].itt {
        Some(itt) => itt,
        None => {
            let layout = match state.its.typer.itt_for(u32::from(table_size)) {
                Ok(layout) => layout,
                Err(why) => {
                    fail("ITT", &why);
                    return Err(Status::NotSupported);
                }
            };
            let pa = alloc_zeroed(frames, layout.bytes, ITT_ALIGN).ok_or(Status::NoSpace)?;
            state.vms[index].itt = Some((pa, layout));
            (pa, layout)
        }
    };
    let vpeid = state.vms[index].vpes[0].vpe.id;
    let commands = match msi::map_commands(device_id, itt.1.mapping(itt.0), vectors, vpeid)
        .and_then(|c| Ok((c, msi::config_bytes(vectors)?)))
    {
        Ok(c) => c,
        Err(why) => {
            fail("ITS commands", &why);
            return Err(Status::NotSupported);
        }
    };
    let mut tables = PhysTableMemory { frames };
    if let Err(why) = vm
        .stage2
        .map(&mut tables, window, page, FRAME, WINDOW_ATTRS)
    {
        fail("MSI window", &alloc::format!("{why:?}"));
        return Err(Status::NoSpace);
    }
    let config = state.vms[index].config.0;
    for &(offset, byte) in &commands.1 {
        crate::arch::its::write_table_byte(config + offset, byte);
    }
    if let Err(why) = state.its.run(&mut state.hw, &commands.0) {
        fail("ITS", &why);
        drop(guard);
        unmap_msi_window(vm, frames, None);
        return Err(Status::NotSupported);
    }
    state.vms[index].msix = Some(MsixMapping { device_id, vectors });
    let first = msi::FIRST_VINTID;
    info!(
        "vLPI direct injection: NIC {bdf} vectors {vectors} -> {name} vPE {vpeid} (vINTIDs \
         {first}..={}, doorbell LPI {}; MSI window IOVA {doorbell_iova:#x} -> ITS page \
         {page:#x}, nothing else of the ITS mapped)",
        first + u32::from(vectors) - 1,
        vpe::doorbell_of(vpeid).unwrap_or(0),
    );
    Ok((doorbell_iova, first))
}

/// Unmaps the MSI window from `vm`'s stage 2 if it is mapped (the owner stops or restarts,
/// or its MSIX_MAP failed), invalidating the CPUs' and the SMMU's TLB entries for it.
pub fn unmap_msi_window(
    vm: &mut Vm,
    frames: &mut FrameAllocator,
    iommu: Option<&mut crate::iommu::Iommu>,
) {
    let window = msi::MSI_WINDOW_IPA;
    let mut tables = PhysTableMemory { frames };
    if vm.stage2.translate(&tables, window).is_none() {
        return;
    }
    let (vmid, root) = (vm.vmid, vm.stage2.root_pa());
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    let unmapped = vm.stage2.unmap(
        &mut tables,
        window,
        FRAME,
        &mut |ipa, size| pieces.push((ipa, size)),
        &mut |ipa, size| mem::tlbi_ipas_for(vmid, root, &[(ipa, size)]),
    );
    match iommu {
        Some(iommu) => iommu.invalidate_ipas(vmid, root, &pieces),
        None => mem::tlbi_ipas_for(vmid, root, &pieces),
    }
    match unmapped {
        Ok(()) => info!("{}: MSI window unmapped", vm.name),
        Err(why) => error!("{}: unmapping the MSI window failed: {why:?}", vm.name),
    }
}
