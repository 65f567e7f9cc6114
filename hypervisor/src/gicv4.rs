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
//! vPE is mapped to; a doorbell wakes the vCPU. The NIC's vectors are not wired yet
//! (docs/ARCHITECTURE.md, "GICv4 direct injection").
//!
//! The state is under [`STATE`], a leaf lock: it is taken inside the vCPU, scheduler or HV
//! locks (vCPU entry and exit run under a vCPU's lock) and nothing is locked while it is held
//! except `arch::gic`'s own leaf locks.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alloc::vec::Vec;

use hypervisor::its::bringup::{
    direct_injection, physical_lpi_table_bytes, table_name, GicFeatures, Its, ItsFault, ItsHw,
    RedistributorLpis,
};
use hypervisor::its::vpe::{self, Residency, Vpe, VpeIds};
use hypervisor::its::{self, RdBase, GITS_TYPER};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::sched::VcpuId;
use log::{error, info, warn};
use spin::Mutex;

use crate::arch::its::ItsMmio;
use crate::arch::{cpu, gic, mem, platform, MAX_PCPUS};
use crate::dtb::Machine;

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
        let ids: Vec<u16> = vm.vpes.iter().map(|v| v.vpe.id).collect();
        let commands = vpe::stop_commands(&ids)?;
        let result = self.its.run(&mut self.hw, &commands);
        // The ITS no longer writes them (or is out of service and writes nothing): the next
        // incarnation starts with no vLPI pending or enabled.
        let vm = &mut self.vms[index];
        for v in vm.vpes.iter_mut() {
            scrub(v.vpe.vpt, v.vpt_bytes);
            v.pending_last = false;
        }
        scrub(vm.config.0, vm.config.1);
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

/// The vCPU whose doorbell physical interrupt `raw` is, if it is one of a mapped vPE.
pub fn doorbell(raw: u32) -> Option<VcpuId> {
    let id = vpe::vpe_of_doorbell(raw)?;
    if !ACTIVE.load(Ordering::Acquire) {
        return None;
    }
    let guard = STATE.lock();
    guard
        .as_ref()?
        .vms
        .iter()
        .find_map(|vm| vm.vpes.iter().find(|v| v.vpe.id == id).map(|v| v.vcpu))
}
