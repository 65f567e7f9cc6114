//! The hypervisor's global state and its reaction to every trap: hypercalls, PSCI emulation,
//! WFI/WFE, stage-2 faults, physical interrupts, and the scheduling mechanics around them.
//!
//! One lock ([`HV`], a fair ticket lock) guards the VMs, vCPUs and scheduler. A pCPU holds it
//! only while handling a trap, never while a guest runs or while it sleeps in WFI, and never for
//! long: a GRANT_COPY batch takes it once per op, a restarting VM's RAM is reloaded without it,
//! and console writes do not take it at all.
//!
//! Lock order (a lock may only be taken while holding those before it): `HV`, then a VM's
//! console (`logger`), then the UART's; the heap's lock is taken by any allocation, under any
//! of them, and takes none. The SMMU has no lock of its own: [`Hv::iommu`] owns it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

use hypervisor::dispatch::sharing::sharing_call;
use hypervisor::dispatch::{self, CallerVm, Outcome, VcpuControl};
use hypervisor::esr::{self, Syndrome};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::vmid::VmidAllocator;
use hypervisor::sched::{RunState, Scheduler, VcpuId};
use log::{error, info, warn};
use shared_abi::evtchn::EVTCHN_INTID;
use shared_abi::hypercall::{self, Status};
use shared_abi::layout::{intid, GUEST_RAM_BASE, PAGE_SIZE};
use spin::mutex::TicketMutex;

use crate::arch::cpu::{self, El1Context};
use crate::arch::gic::{self, VgicContext, ICH_HCR_UIE};
use crate::arch::mem;
use crate::arch::vectors::TrapFrame;
use crate::arch::MAX_PCPUS;
use crate::iommu::Iommu;
use crate::logger::{flush_vm_console, vm_console_write};
use crate::passthrough::Passthrough;
pub use crate::sharing::Sharing;
use crate::sharing::{Env, Notify, RetainedRam};
use crate::vm::{StopKind, Vcpu, Vm};
use hypervisor::grant::{batch_array_ok, RamRelease};
use shared_abi::grant::CopyOp;

/// Time slice in milliseconds.
pub const SLICE_MS: u64 = 10;
const NO_VCPU: usize = usize::MAX;
/// CNTV_CTL_EL0 bits.
const TIMER_ENABLE: u64 = 1 << 0;
const TIMER_IMASK: u64 = 1 << 1;

pub struct Hv {
    pub frames: FrameAllocator,
    pub vmids: VmidAllocator,
    pub vms: Vec<Option<Vm>>,
    pub vcpus: Vec<Vcpu>,
    pub sched: Scheduler,
    pub slice_ticks: u64,
    pub pcpus: usize,
    pub sharing: Sharing,
    /// The SMMU (if the machine has one) and what is attached to it.
    pub iommu: Iommu,
    /// The PCI function passed through to a driver domain, if the topology names one.
    pub passthrough: Option<Passthrough>,
    /// VMs being reloaded for a restart outside the lock (out of `vms` meanwhile, but alive).
    pub reloading: usize,
}

/// A VM restarting (PSCI SYSTEM_RESET) whose RAM is reloaded without the HV lock held: zeroing
/// and copying megabytes must not keep other VMs' traps waiting. Out of `Hv::vms` meanwhile, so
/// nothing else can reach its RAM.
pub struct Reload {
    vm_index: usize,
    vm: Vm,
    owns_device: bool,
}

/// Fair (first come, first served): a pCPU that releases it between the steps of long work,
/// such as the ops of a GRANT_COPY batch, lets the waiting pCPUs in instead of winning it back.
pub static HV: TicketMutex<Option<Hv>> = TicketMutex::new(None);
/// The vCPU each pCPU is running (NO_VCPU when idle). Only written by that pCPU.
static CURRENT: [AtomicUsize; MAX_PCPUS] = [const { AtomicUsize::new(NO_VCPU) }; MAX_PCPUS];
/// The VM id of the vCPU each pCPU is running (0 when idle). Only written by that pCPU.
static CURRENT_VM: [AtomicU16; MAX_PCPUS] = [const { AtomicU16::new(0) }; MAX_PCPUS];
/// pCPUs sleeping in WFI, to be kicked when work appears. Written under the HV lock.
static IDLE: [AtomicBool; MAX_PCPUS] = [const { AtomicBool::new(false) }; MAX_PCPUS];

/// What the trapped vCPU should do next.
enum Action {
    Continue,
    /// Give the pCPU to another runnable vCPU if there is one (time slice over, yield).
    Preempt,
    /// WFI: sleep until an interrupt or the vCPU's timer.
    Wait,
    /// This vCPU powers off (PSCI CPU_OFF).
    VcpuOff,
    /// The VM stops for this reason.
    StopVm(StopKind),
}

impl Hv {
    /// The VM of vCPU `id`; `None` once the VM has been torn down. A vCPU of a torn-down VM
    /// is never scheduled (see [`Hv::try_finish_stop`]), so `None` here means a stale id, which
    /// callers treat like a stopping VM rather than trusting an invariant.
    pub fn vm_of(&self, id: VcpuId) -> Option<&Vm> {
        self.vms.get(self.vcpus.get(id)?.vm)?.as_ref()
    }

    fn vm_of_mut(&mut self, id: VcpuId) -> Option<&mut Vm> {
        let vm = self.vcpus.get(id)?.vm;
        self.vms.get_mut(vm)?.as_mut()
    }

    /// The VM's name for log lines, or a placeholder for a vCPU whose VM is gone.
    fn name_of(&self, id: VcpuId) -> String {
        self.vm_of(id)
            .map_or_else(|| String::from("(stopped VM)"), |vm| vm.name.clone())
    }

    pub fn live_vms(&self) -> usize {
        self.vms.iter().filter(|v| v.is_some()).count() + self.reloading
    }

    /// Wakes idle pCPUs so they look at the run queue.
    fn kick_idle(&self, this_pcpu: usize) {
        for (pcpu, idle) in IDLE.iter().enumerate().take(self.pcpus) {
            if pcpu != this_pcpu && idle.load(Ordering::Acquire) {
                gic::kick(pcpu);
            }
        }
    }

    /// Saves the running vCPU's state from the CPU into its structure.
    fn save(&mut self, id: VcpuId, frame: &TrapFrame) {
        let vcpu = &mut self.vcpus[id];
        vcpu.frame = *frame;
        vcpu.el1 = El1Context::save();
        vcpu.fp.save();
        vcpu.vgic.save();
        // Its list registers must not raise maintenance interrupts while another vCPU (or the
        // idle loop) owns this pCPU.
        VgicContext::quiesce();
        // A vCPU that is not running must not have its timer fire on this pCPU.
        cpu::set_vtimer_ctl(0);
    }

    /// Loads vCPU `id` onto this pCPU; `frame` becomes its register file. False (nothing
    /// loaded) if the vCPU's VM is gone or stopping: such a vCPU must not run again.
    fn load(&mut self, pcpu: usize, id: VcpuId, frame: &mut TrapFrame) -> bool {
        let Some(vm) = self.vm_of_mut(id).filter(|vm| vm.stop.is_none()) else {
            return false;
        };
        CURRENT_VM[pcpu].store(vm.id, Ordering::Relaxed);
        cpu::set_vttbr(vm.vmid, vm.stage2.root_pa());
        if vm.vmid_needs_flush {
            mem::tlbi_current_vmid_all();
            vm.vmid_needs_flush = false;
        }
        let vcpu = &mut self.vcpus[id];
        cpu::set_vmpidr(vcpu.index);
        vcpu.el1.restore();
        vcpu.fp.restore();
        let waiting = vcpu.virqs.refill(&mut vcpu.vgic.lrs);
        vcpu.vgic.hcr = if waiting { ICH_HCR_UIE } else { 0 };
        vcpu.vgic.restore();
        *frame = vcpu.frame;
        CURRENT[pcpu].store(id, Ordering::Relaxed);
        self.arm_timer(cpu::counter());
        true
    }

    /// Programs the EL2 timer for the end of this slice or the earliest blocked deadline.
    fn arm_timer(&self, now: u64) {
        let slice_end = now + self.slice_ticks;
        let deadline = self
            .sched
            .earliest_deadline()
            .map_or(slice_end, |d| d.min(slice_end));
        cpu::set_hyp_timer(deadline);
    }

    /// Grant and event-channel hypercalls of vCPU `id` ([`dispatch::sharing::sharing_call`]
    /// over this machine): the status for x0 and, for calls that return a port, the value for
    /// x1.
    fn sharing_call(
        &mut self,
        id: VcpuId,
        function: u64,
        x: &[u64; 31],
        pcpu: usize,
    ) -> (Status, Option<u64>) {
        let Some(caller) = self.vm_of(id).map(|vm| vm.id) else {
            return (Status::InvalidArgument, None);
        };
        let Sharing {
            grants,
            events,
            connections,
            ..
        } = &mut self.sharing;
        let mut env = Env {
            vms: &mut self.vms[..],
            frames: &mut self.frames,
            iommu: &mut self.iommu,
            connections,
        };
        let answer = sharing_call(grants, events, &mut env, caller, function, x);
        self.sharing.release(&mut self.frames, &answer.released);
        if let Some(vm) = answer.notify {
            self.notify(Notify { vm }, pcpu);
        }
        (answer.status, answer.x1)
    }

    /// True if vCPU `id`'s VM may run a GRANT_COPY batch of `count` ops at `ops_gpa` (the
    /// batch-level rules; each op is then checked on its own).
    fn copy_array_ok(&mut self, id: VcpuId, ops_gpa: u64, count: u64) -> bool {
        let Some(caller) = self.vm_of(id).map(|vm| vm.id) else {
            return false;
        };
        let env = Env {
            vms: &mut self.vms[..],
            frames: &mut self.frames,
            iommu: &mut self.iommu,
            connections: &self.sharing.connections,
        };
        batch_array_ok(&env, caller, ops_gpa, count, CopyOp::WORDS)
    }

    /// Raises the event-channel interrupt on a VM's first vCPU.
    fn notify(&mut self, notify: Notify, pcpu: usize) {
        let Some(vm) = self
            .vms
            .get(usize::from(notify.vm).wrapping_sub(1))
            .and_then(Option::as_ref)
        else {
            return;
        };
        if vm.stop.is_some() {
            return;
        }
        let Some(&first) = vm.vcpus.first() else {
            return;
        };
        let _ = self.inject(first, EVTCHN_INTID, pcpu);
    }

    /// Refills the live list registers of the running vCPU (after new interrupts were queued).
    fn refill_live(&mut self, id: VcpuId) {
        let vcpu = &mut self.vcpus[id];
        vcpu.vgic.save();
        let waiting = vcpu.virqs.refill(&mut vcpu.vgic.lrs);
        vcpu.vgic.hcr = if waiting { ICH_HCR_UIE } else { 0 };
        vcpu.vgic.restore();
    }

    /// Queues a virtual interrupt for a vCPU and wakes it if it sleeps in WFI.
    fn inject(&mut self, id: VcpuId, intid: u32, this_pcpu: usize) -> Result<(), Status> {
        // Level-style sources: one queued copy is enough, since the guest's handler looks at the
        // source (the timer, or every pending port) rather than counting interrupts.
        let pushed = if intid == intid::VIRTUAL_TIMER || intid == EVTCHN_INTID {
            self.vcpus[id].virqs.push_unique(intid)
        } else {
            self.vcpus[id].virqs.push(intid)
        };
        pushed.map_err(|_| Status::NoSpace)?;
        self.wake_for_interrupt(id, this_pcpu);
        Ok(())
    }

    /// The passed-through function raised its INTx line `raw` (acknowledged, priority dropped,
    /// still active): hand it to the owner's vCPU 0 with the hardware bit, or deactivate it at
    /// once if the owner cannot take it (stopping, or its queue is full), so the line is not
    /// lost forever.
    fn inject_passthrough_intx(&mut self, raw: u32, this_pcpu: usize) {
        let owner = self
            .passthrough
            .as_ref()
            .map(|p| p.owner_id)
            .and_then(|id| self.vms.get(usize::from(id).wrapping_sub(1)))
            .and_then(Option::as_ref)
            .filter(|vm| vm.stop.is_none())
            .and_then(|vm| vm.vcpus.first().copied())
            // A vCPU that is off would only hold the line until it is reset: release it now
            // (INTx is level-triggered, so a device still asserting it interrupts again).
            .filter(|&id| self.sched.state(id) != RunState::Off);
        let queued = owner.is_some_and(|id| {
            self.vcpus[id]
                .virqs
                .push_hw(intid::PASSTHROUGH_INTX, raw)
                .is_ok()
        });
        match owner {
            Some(id) if queued => self.wake_for_interrupt(id, this_pcpu),
            _ => gic::deactivate(raw),
        }
    }

    /// Makes a vCPU with a newly queued interrupt notice it: wakes it from WFI, or kicks the
    /// pCPU it runs on.
    fn wake_for_interrupt(&mut self, id: VcpuId, this_pcpu: usize) {
        match self.sched.state(id) {
            RunState::Blocked { .. } => {
                self.sched.wake(id);
                self.kick_idle(this_pcpu);
            }
            RunState::Running { pcpu } if pcpu != this_pcpu => gic::kick(pcpu),
            _ => {}
        }
    }

    /// Asks every vCPU of a VM to stop; the VM is finished once none of them is running.
    fn request_stop(&mut self, vm_index: usize, kind: StopKind, this_pcpu: usize) {
        let Some(vm) = self.vms[vm_index].as_mut() else {
            return;
        };
        if vm.stop.is_none() || matches!(kind, StopKind::Killed(_)) {
            vm.stop = Some(kind);
        }
        for id in vm.vcpus.clone() {
            match self.sched.state(id) {
                RunState::Running { pcpu } if pcpu != this_pcpu => gic::kick(pcpu),
                RunState::Running { .. } => {}
                _ => self.sched.stop(id),
            }
        }
    }

    /// Completes a requested stop when no vCPU of the VM runs any more. A restart is completed
    /// by the caller: it reloads the returned VM's RAM after releasing the lock, then calls
    /// [`Hv::reinstall`].
    #[must_use]
    fn try_finish_stop(&mut self, vm_index: usize, this_pcpu: usize) -> Option<Reload> {
        let vm = self.vms.get(vm_index).and_then(Option::as_ref)?;
        let mut kind = vm.stop.clone()?;
        if vm
            .vcpus
            .iter()
            .any(|&id| matches!(self.sched.state(id), RunState::Running { .. }))
        {
            return None;
        }
        let vm_id = vm.id;
        let vcpu_ids = vm.vcpus.clone();
        let pages = (vm.ram_bytes / PAGE_SIZE) as usize;
        // No vCPU of this incarnation runs again: a CPU_ON that slipped in before the stop was
        // requested (or a stale run-queue entry) must not resurrect one, and the device lines
        // its vCPUs held are released.
        for &id in &vcpu_ids {
            self.sched.stop(id);
            if let Some(vcpu) = self.vcpus.get_mut(id) {
                vcpu.release_hardware_interrupts();
            }
        }
        // The owner's device stops and its stream aborts before any of the owner's RAM (or the
        // pages granted to it) can change hands.
        let owns_device = self
            .passthrough
            .as_ref()
            .is_some_and(|p| p.owner_id == vm_id);
        if owns_device {
            if let Some(p) = self.passthrough.as_mut() {
                p.owner_stopped(&mut self.iommu);
            }
        }
        // A restart while peers still map frames of its RAM needs fresh RAM. It is decided
        // before the sharing teardown, so that a restart that cannot happen is torn down as a
        // stop for good and the peers are told the VM is gone rather than left waiting for an
        // incarnation that never comes.
        let mut replaced_ram = None;
        if kind == StopKind::Reset && self.sharing.grants.lent_count(vm_id) > 0 {
            let (frames, iommu) = (&mut self.frames, &mut self.iommu);
            match self.vms[vm_index]
                .as_mut()
                .and_then(|vm| vm.replace_ram(frames, iommu))
            {
                Some(old_pa) => replaced_ram = Some(old_pa),
                None => {
                    kind = StopKind::Killed(String::from(
                        "cannot restart: peers still map its RAM and there is no free RAM for a \
                         fresh copy",
                    ))
                }
            }
        }
        let restart = kind == StopKind::Reset;
        let stopped = self.sharing.vm_stopped(
            &mut self.vms,
            &mut self.frames,
            &mut self.iommu,
            vm_id,
            restart,
        );
        self.sharing.release(&mut self.frames, &stopped.released);
        for notify in &stopped.notify {
            self.notify(*notify, this_pcpu);
        }
        let retained = |pa| RetainedRam {
            release: RamRelease {
                vm: vm_id,
                incarnation: stopped.incarnation,
            },
            pa,
            pages,
        };
        let mut vm = self.vms[vm_index].take()?;
        flush_vm_console(vm_id);
        match kind {
            StopKind::Reset => {
                if let Some(old_pa) = replaced_ram {
                    self.sharing.retained.push(retained(old_pa));
                }
                info!(
                    "VM {} restarting (PSCI SYSTEM_RESET, boot {})",
                    vm.name,
                    vm.boots + 1
                );
                vm.stop = None;
                self.reloading += 1;
                return Some(Reload {
                    vm_index,
                    vm,
                    owns_device,
                });
            }
            StopKind::PowerOff | StopKind::Killed(_) => {
                let how = if kind == StopKind::PowerOff {
                    "powered off"
                } else {
                    "killed"
                };
                let name = vm.name.clone();
                let vmid = vm.vmid;
                if let StopKind::Killed(reason) = &kind {
                    if reason.starts_with("cannot restart") {
                        error!("VM {name}: {reason}; it stays stopped and its peers are told");
                    }
                }
                // RAM that peers still map stays readable to them until they unmap.
                if let Some(kept) =
                    vm.destroy(&mut self.frames, &mut self.iommu, stopped.ram_free_now)
                {
                    self.sharing.retained.push(retained(kept));
                }
                let _ = self.vmids.free(vmid);
                info!(
                    "VM {name} stopped ({how}); {} VM(s) still running",
                    self.live_vms()
                );
            }
        }
        None
    }

    /// Puts a VM reloaded by [`reload_outside_lock`] back and starts its first vCPU.
    fn reinstall(&mut self, reload: Reload, this_pcpu: usize) {
        let Reload {
            vm_index,
            vm,
            owns_device,
        } = reload;
        self.reloading -= 1;
        if owns_device {
            if let Some(p) = self.passthrough.as_mut() {
                p.owner_restarted(&mut self.iommu, &vm);
            }
        }
        let first = vm.vcpus.first().copied();
        let info_gpa = shared_abi::layout::start_info_gpa(vm.ram_bytes);
        self.vms[vm_index] = Some(vm);
        if let Some(first) = first {
            self.vcpus[first].reset(GUEST_RAM_BASE, info_gpa);
            self.sched.wake(first);
            self.kick_idle(this_pcpu);
        }
    }
}

/// Zeroes and reloads a restarting VM's RAM with no lock held, then puts it back; a VM whose
/// reload fails is put back stopping, and torn down for good (its peers are told).
fn reload_outside_lock(mut reload: Reload, pcpu: usize) {
    let vcpus = reload.vm.vcpus.len() as u32;
    let loaded = reload.vm.load_memory(vcpus);
    with_hv(|hv| match loaded {
        Ok(()) => hv.reinstall(reload, pcpu),
        Err(e) => {
            let vm_index = reload.vm_index;
            let why = format!("cannot restart: reloading its memory failed ({e})");
            error!("VM {}: {why}", reload.vm.name);
            reload.vm.stop = Some(StopKind::Killed(why));
            hv.reloading -= 1;
            hv.vms[vm_index] = Some(reload.vm);
            // Every vCPU is off, so this completes the stop at once (and restarts nothing).
            let _ = hv.try_finish_stop(vm_index, pcpu);
        }
    });
}

/// Builds the global state. Called once by the primary before any vCPU runs.
pub fn install(hv: Hv) {
    *HV.lock() = Some(hv);
}

fn with_hv<R>(f: impl FnOnce(&mut Hv) -> R) -> R {
    let mut guard = HV.lock();
    f(guard.as_mut().expect("hypervisor state installed at boot"))
}

/// A pCPU's entry into the scheduler at boot: waits for a runnable vCPU and enters it.
pub fn run_first(pcpu: usize) -> ! {
    let mut frame = TrapFrame::default();
    schedule(pcpu, &mut frame);
    crate::arch::vectors::enter_guest(&frame)
}

/// Picks the next vCPU for this pCPU and loads it into `frame`, sleeping while there is none.
/// Powers the machine off when every VM has stopped.
fn schedule(pcpu: usize, frame: &mut TrapFrame) {
    CURRENT[pcpu].store(NO_VCPU, Ordering::Relaxed);
    loop {
        let deadline = {
            let mut guard = HV.lock();
            let hv = guard.as_mut().expect("hypervisor state installed at boot");
            hv.sched.wake_expired(cpu::counter());
            while let Some(id) = hv.sched.pick(pcpu) {
                if hv.load(pcpu, id, frame) {
                    IDLE[pcpu].store(false, Ordering::Release);
                    return;
                }
                // Its VM is stopping or gone: it stays off.
                hv.sched.stop(id);
            }
            if hv.live_vms() == 0 {
                drop(guard);
                info!("all VMs have stopped; powering off");
                cpu::system_off();
            }
            IDLE[pcpu].store(true, Ordering::Release);
            hv.sched.earliest_deadline()
        };
        match deadline {
            Some(d) => cpu::set_hyp_timer(d),
            None => cpu::stop_hyp_timer(),
        }
        cpu::wait_for_interrupt();
        // Whatever woke us (kick, timer, a stale guest timer) only needs acknowledging.
        while let Some(id) = gic::acknowledge() {
            if id >= 1020 {
                break;
            }
            match id {
                gic::HYP_TIMER_PPI => cpu::stop_hyp_timer(),
                gic::MAINTENANCE_PPI | gic::VTIMER_PPI | gic::KICK_SGI => {}
                other => {
                    device_irq(other, pcpu);
                    continue;
                }
            }
            gic::end(id);
        }
    }
}

/// Applies `action` for the vCPU that trapped on this pCPU.
fn finish(pcpu: usize, frame: &mut TrapFrame, action: Action) {
    let id = CURRENT[pcpu].load(Ordering::Relaxed);
    let mut guard = HV.lock();
    let hv = guard.as_mut().expect("hypervisor state installed at boot");
    let now = cpu::counter();
    if hv.sched.wake_expired(now) > 0 {
        hv.kick_idle(pcpu);
    }
    let vm_index = hv.vcpus[id].vm;
    let action = match action {
        Action::StopVm(kind) => {
            hv.request_stop(vm_index, kind, pcpu);
            Action::StopVm(StopKind::PowerOff)
        }
        // Another vCPU asked the VM to stop (or it is gone): this one stops too, whatever it
        // trapped for.
        _ if hv.vm_of(id).is_none_or(|vm| vm.stop.is_some()) => Action::StopVm(StopKind::PowerOff),
        other => other,
    };
    let reload = match action {
        Action::Continue => {
            hv.refill_live(id);
            return;
        }
        Action::Preempt => {
            if !hv.sched.has_runnable() {
                hv.refill_live(id);
                hv.arm_timer(now);
                return;
            }
            hv.save(id, frame);
            hv.sched.preempt(id);
            None
        }
        Action::Wait => {
            let vcpu = &mut hv.vcpus[id];
            vcpu.vgic.save();
            if vcpu.virqs.has_pending(&vcpu.vgic.lrs) {
                hv.refill_live(id);
                return;
            }
            hv.save(id, frame);
            let timer = &hv.vcpus[id].el1;
            let deadline = (timer.cntv_ctl & (TIMER_ENABLE | TIMER_IMASK) == TIMER_ENABLE)
                .then_some(timer.cntv_cval);
            hv.sched.block(id, deadline);
            None
        }
        Action::VcpuOff => {
            hv.save(id, frame);
            hv.vcpus[id].release_hardware_interrupts();
            hv.sched.stop(id);
            let all_off = hv
                .vm_of(id)
                .is_some_and(|vm| vm.vcpus.iter().all(|&v| hv.sched.state(v) == RunState::Off));
            if all_off {
                info!("VM {}: every vCPU is off", hv.name_of(id));
                hv.request_stop(vm_index, StopKind::PowerOff, pcpu);
            }
            hv.try_finish_stop(vm_index, pcpu)
        }
        Action::StopVm(_) => {
            // Saved so that the teardown sees (and releases) the interrupts its list
            // registers held.
            hv.save(id, frame);
            hv.sched.stop(id);
            hv.try_finish_stop(vm_index, pcpu)
        }
    };
    drop(guard);
    if let Some(reload) = reload {
        reload_outside_lock(reload, pcpu);
    }
    schedule(pcpu, frame);
}

/// A device's interrupt (the SMMU's, or the passed-through function's INTx), taken while a guest
/// or the idle loop ran; ends or hands on the interrupt itself.
fn device_irq(raw: u32, pcpu: usize) {
    let handled = with_hv(|hv| {
        if hv.iommu.is_own_irq(raw) {
            hv.iommu.report_events();
            gic::end(raw);
            return true;
        }
        let is_intx = hv.passthrough.as_ref().and_then(|p| p.intx) == Some(raw);
        if is_intx {
            // Priority drop only: the owner's EOI of the virtual interrupt deactivates it.
            gic::drop_priority(raw);
            hv.inject_passthrough_intx(raw, pcpu);
        }
        is_intx
    });
    if !handled {
        warn!("unexpected physical interrupt {raw}");
        gic::end(raw);
    }
}

/// Synchronous exception from a guest.
#[no_mangle]
extern "C" fn lower_sync(frame: &mut TrapFrame) {
    let pcpu = cpu::pcpu_index();
    let fault = cpu::fault_info();
    let action = match esr::exception_class(fault.esr) {
        esr::EC_HVC64 => hypercall(pcpu, frame),
        esr::EC_SMC64 => {
            // SMC traps report the SMC itself as the return address; step over it.
            frame.elr += 4;
            hypercall(pcpu, frame)
        }
        esr::EC_WFX => {
            frame.elr += 4;
            if esr::is_wfe(fault.esr) {
                Action::Preempt
            } else {
                Action::Wait
            }
        }
        esr::EC_DABT_LOWER | esr::EC_IABT_LOWER => {
            let ipa = esr::fault_ipa(fault.hpfar, fault.far);
            let id = CURRENT[pcpu].load(Ordering::Relaxed);
            let emulated = with_hv(|hv| {
                // Field by field, so the VM can be read while the device model changes.
                let vm = hv.vcpus.get(id).and_then(|v| hv.vms.get(v.vm)?.as_ref());
                let vm = vm.ok_or_else(|| String::from("the VM is gone"))?;
                crate::mmio::emulate(vm, hv.passthrough.as_mut(), ipa, fault.esr, frame)
            });
            match emulated {
                Ok(()) => Action::Continue,
                Err(why) => Action::StopVm(StopKind::Killed(format!(
                    "stage-2 fault at IPA {ipa:#x} ({}) at PC {:#x}: {why}",
                    Syndrome(fault.esr),
                    frame.elr
                ))),
            }
        }
        _ => Action::StopVm(StopKind::Killed(format!(
            "{} at PC {:#x}",
            Syndrome(fault.esr),
            frame.elr
        ))),
    };
    if let Action::StopVm(StopKind::Killed(reason)) = &action {
        let id = CURRENT[pcpu].load(Ordering::Relaxed);
        let name = with_hv(|hv| hv.name_of(id));
        error!("killing VM {name}: {reason}");
    }
    finish(pcpu, frame, action);
}

/// Physical interrupt while a guest ran.
#[no_mangle]
extern "C" fn lower_irq(frame: &mut TrapFrame) {
    let pcpu = cpu::pcpu_index();
    let id = CURRENT[pcpu].load(Ordering::Relaxed);
    let mut action = Action::Continue;
    while let Some(raw) = gic::acknowledge() {
        if raw >= 1020 {
            break;
        }
        match raw {
            gic::HYP_TIMER_PPI => {
                cpu::stop_hyp_timer();
                action = Action::Preempt;
            }
            gic::VTIMER_PPI => {
                // The guest's timer fired: mask it at the source (the guest unmasks it when it
                // reprograms the timer) and deliver it as a virtual interrupt.
                cpu::set_vtimer_ctl(cpu::vtimer_ctl() | TIMER_IMASK);
                let _ = with_hv(|hv| hv.inject(id, intid::VIRTUAL_TIMER, pcpu));
            }
            // The maintenance interrupt is level-triggered: its cause (an underflow, or a spent
            // EOI request in a list register) must be cleared before it is ended, or it would
            // be taken again at once. Refilling the list registers clears both.
            gic::MAINTENANCE_PPI => with_hv(|hv| hv.refill_live(id)),
            // A kick only brings the pCPU here; `finish` notices stop requests.
            gic::KICK_SGI => {}
            other => {
                device_irq(other, pcpu);
                continue;
            }
        }
        gic::end(raw);
    }
    finish(pcpu, frame, action);
}

#[no_mangle]
extern "C" fn lower_serror(frame: &mut TrapFrame) {
    let pcpu = cpu::pcpu_index();
    finish(
        pcpu,
        frame,
        Action::StopVm(StopKind::Killed(String::from(
            "SError (asynchronous abort)",
        ))),
    );
}

#[no_mangle]
extern "C" fn el2_unexpected(frame: &mut TrapFrame) {
    let fault = cpu::fault_info();
    panic!(
        "exception in the hypervisor itself: {} (ESR {:#x}) at PC {:#x}, FAR {:#x}",
        Syndrome(fault.esr),
        fault.esr,
        frame.elr,
        fault.far
    );
}

/// HVC (or SMC) from a guest: carried out by [`dispatch::execute`] on this vCPU's
/// [`TrapMachine`]; the outcome is applied to the vCPU here.
fn hypercall(pcpu: usize, frame: &mut TrapFrame) -> Action {
    let mut machine = TrapMachine {
        pcpu,
        vcpu: CURRENT[pcpu].load(Ordering::Relaxed),
        vm_id: CURRENT_VM[pcpu].load(Ordering::Relaxed),
    };
    match dispatch::execute(&frame.x, &mut machine) {
        Outcome::Return { x0, x1 } => {
            frame.x[0] = x0;
            if let Some(x1) = x1 {
                frame.x[1] = x1;
            }
            Action::Continue
        }
        Outcome::Yield => {
            frame.x[0] = Status::Ok.as_u64();
            Action::Preempt
        }
        Outcome::VcpuOff => Action::VcpuOff,
        Outcome::SystemOff => {
            let name = with_hv(|hv| hv.name_of(machine.vcpu));
            info!("VM {name} requested power off (PSCI SYSTEM_OFF)");
            Action::StopVm(StopKind::PowerOff)
        }
        Outcome::SystemReset => Action::StopVm(StopKind::Reset),
    }
}

/// The machine as the hypercall of vCPU `vcpu` (of VM `vm_id`, on `pcpu`) sees it. Each method
/// takes the HV lock for itself alone, so the dispatcher's loops (GRANT_COPY's ops, TEST_INJECT's
/// SGIs) let other pCPUs in between steps; console writes take only that VM's console lock.
struct TrapMachine {
    pcpu: usize,
    vcpu: VcpuId,
    vm_id: u16,
}

impl dispatch::Machine for TrapMachine {
    fn console(&mut self, bytes: &[u8]) {
        vm_console_write(self.vm_id, bytes);
    }

    fn inject_sgi(&mut self, sgi: u32) -> Result<(), Status> {
        with_hv(|hv| hv.inject(self.vcpu, sgi, self.pcpu))
    }

    fn copy_batch_ok(&mut self, ops_gpa: u64, count: u64) -> bool {
        with_hv(|hv| hv.copy_array_ok(self.vcpu, ops_gpa, count))
    }

    fn copy_op(&mut self, op_gpa: u64) -> Status {
        let mut x = [0u64; 31];
        x[0] = hypercall::GRANT_COPY;
        x[1] = op_gpa;
        x[2] = 1;
        with_hv(|hv| hv.sharing_call(self.vcpu, hypercall::GRANT_COPY, &x, self.pcpu)).0
    }

    fn sharing(&mut self, function: u64, x: &[u64; 31]) -> (Status, Option<u64>) {
        with_hv(|hv| hv.sharing_call(self.vcpu, function, x, self.pcpu))
    }

    fn with_vcpus<R>(&mut self, f: impl FnOnce(&mut dyn VcpuControl) -> R) -> Option<R> {
        with_hv(|hv| {
            let vm_index = hv.vcpus.get(self.vcpu)?.vm;
            hv.vms.get(vm_index)?.as_ref()?;
            let mut view = VmVcpus {
                hv,
                vm_index,
                pcpu: self.pcpu,
            };
            Some(f(&mut view))
        })
    }
}

/// One VM's vCPUs for PSCI CPU_ON, under the HV lock.
struct VmVcpus<'a> {
    hv: &'a mut Hv,
    vm_index: usize,
    pcpu: usize,
}

impl VmVcpus<'_> {
    fn vcpu_id(&self, index: usize) -> Option<VcpuId> {
        self.hv
            .vms
            .get(self.vm_index)?
            .as_ref()?
            .vcpus
            .get(index)
            .copied()
    }
}

impl VcpuControl for VmVcpus<'_> {
    fn caller_vm(&self) -> CallerVm {
        match self.hv.vms.get(self.vm_index).and_then(Option::as_ref) {
            Some(vm) => CallerVm {
                vcpus: vm.vcpus.len(),
                ram_bytes: vm.ram_bytes,
                stopping: vm.stop.is_some(),
            },
            // Checked by `with_vcpus`; a VM that is gone is as good as stopping.
            None => CallerVm {
                vcpus: 0,
                ram_bytes: 0,
                stopping: true,
            },
        }
    }

    fn is_off(&self, index: usize) -> bool {
        self.vcpu_id(index)
            .is_some_and(|id| self.hv.sched.state(id) == RunState::Off)
    }

    fn start(&mut self, index: usize, entry: u64, context: u64) {
        let Some(id) = self.vcpu_id(index) else {
            return;
        };
        self.hv.vcpus[id].reset(entry, context);
        self.hv.sched.wake(id);
        self.hv.kick_idle(self.pcpu);
    }
}
