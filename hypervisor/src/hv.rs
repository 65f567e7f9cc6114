//! The hypervisor's reaction to every trap: hypercalls (carried out by the library's
//! `dispatch`), WFI/WFE, stage-2 faults, physical interrupts, VM stops and restarts, and the
//! scheduling mechanics around them.
//!
//! The state is split over three kinds of lock (`locks.rs` has the order and the tokens that
//! enforce it): [`Hv`], the machine, under the HV lock; each vCPU's context and pending
//! interrupts under its own lock; the scheduler under its own. A pCPU holds a lock only while
//! handling a trap, never while a guest runs or while it sleeps in WFI. Timer ticks, WFI,
//! context switches and interrupt injection take only a vCPU's lock and the scheduler's; the HV
//! lock is not taken by GRANT_COPY (each op is checked under the copy view of one VM at a time,
//! and the bytes copied with no lock, the frames pinned: `sharing::copy_op`); EVTCHN_SEND and
//! EVTCHN_UNMASK take only the two VMs' event locks, one after the other; a balloon batch
//! scrubs or zeroes its frames with no lock held; a restarting VM's RAM is reloaded without any lock;
//! console writes take only that VM's console lock.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use hypervisor::accounting::{self, Accounting, Counter, El2Time, ExitKind};
use hypervisor::dispatch::sharing::sharing_call;
use hypervisor::dispatch::{self, CallerVm, MsixControl, Outcome, VcpuControl};
use hypervisor::esr::{self, Syndrome};
use hypervisor::evtchn::Route;
use hypervisor::grant::{RamRelease, VmId};
use hypervisor::ioreq::{self, ABSENT_DEVICE_READ};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::ram_map::{ram_pages_of_frames, split_lent};
use hypervisor::restart::{self, Mark, SpareRam, Timeline, Verdict};
use hypervisor::sched::{GiveWay, RunState, Scheduler, VcpuId};
use log::{error, info, warn};
use shared_abi::bundle::VmKind;
use shared_abi::evtchn::{clear_mask, set_pending, Delivery, EVTCHN_INTID};
use shared_abi::hypercall::{self, Status};
use shared_abi::ioreq::take_response;
use shared_abi::layout::{intid, GUEST_RAM_BASE, PAGE_SIZE};

use crate::arch::cpu::{self, El1Context};
use crate::arch::gic::{self, VgicContext, ICH_HCR_UIE};
use crate::arch::mem::{self, free_kept_runs};
use crate::arch::vectors::TrapFrame;
use crate::arch::MAX_PCPUS;
use crate::ballooning::{Fresh, Scrub};
use crate::locks::{
    EventsLocked, HvHeld, HvLocked, MayLockEvents, MayLockSched, MayLockVcpu, SchedLocked,
    Unlocked, VcpuLocked,
};
use crate::logger::{flush_vm_console, vm_console_write};
pub use crate::machine::Hv;
use crate::sampler;
use crate::sharing::{
    close_view, events, open_view, publish_table, set_port_pending, wait_for_copies,
    ConnectionKind, Env, Notify, RetainedRam, Sharing,
};
use crate::vm::{StopKind, Vcpu, Vm};

/// Time slice in milliseconds.
pub const SLICE_MS: u64 = 10;
const NO_VCPU: usize = usize::MAX;
/// CNTV_CTL_EL0 bits.
const TIMER_ENABLE: u64 = 1 << 0;
const TIMER_IMASK: u64 = 1 << 1;

/// A VM restarting (PSCI SYSTEM_RESET) whose RAM is reloaded without the HV lock held: zeroing
/// and copying megabytes must not keep other VMs' traps waiting. Out of `Hv::vms` meanwhile, so
/// nothing else can reach its RAM.
pub struct Reload {
    vm_index: usize,
    vm: Vm,
    owns_device: bool,
    /// Its RAM is a warm spare, zeroed already: only the image and start-info are written.
    warm: bool,
}

/// The vCPU each pCPU is running (NO_VCPU when idle). Only written by that pCPU.
static CURRENT: [AtomicUsize; MAX_PCPUS] = [const { AtomicUsize::new(NO_VCPU) }; MAX_PCPUS];
/// The VM id of the vCPU each pCPU is running (0 when idle). Only written by that pCPU.
static CURRENT_VM: [AtomicU16; MAX_PCPUS] = [const { AtomicU16::new(0) }; MAX_PCPUS];
/// pCPUs sleeping in WFI, to be kicked when work appears. Set under the scheduler's lock in the
/// same step that found nothing to run, so a wake-up after it always sees the flag.
static IDLE: [AtomicBool; MAX_PCPUS] = [const { AtomicBool::new(false) }; MAX_PCPUS];
/// pCPUs in use, EL2 timer ticks per slice, and VMs alive (in the table or being reloaded).
static PCPUS: AtomicUsize = AtomicUsize::new(0);
static SLICE_TICKS: AtomicU64 = AtomicU64::new(0);
static LIVE_VMS: AtomicUsize = AtomicUsize::new(0);
/// Per-VM counters for ACCOUNTING_REPORT.
static ACCOUNTING: Accounting = Accounting::new();
/// When each VM id last had an ACCOUNTING_REPORT printed (counter ticks, 0 = never).
static LAST_REPORT: [AtomicU64; shared_abi::layout::MAX_VMS + 1] =
    [const { AtomicU64::new(0) }; shared_abi::layout::MAX_VMS + 1];
/// When each pCPU last charged its running VM's time (counter ticks).
static CHARGED_AT: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];

/// What the trapped vCPU should do next.
enum Action {
    Continue,
    /// Give the pCPU to another runnable vCPU if there is one (time slice over, yield).
    Preempt,
    /// As `Preempt`, because a woken vCPU asked this one to give way (`sched`'s wake-up
    /// preemption); counted in the VM's `gave_way` when it does.
    GiveWay,
    /// WFI: sleep until an interrupt or the vCPU's timer.
    Wait,
    /// This vCPU powers off (PSCI CPU_OFF).
    VcpuOff,
    /// The VM stops for this reason.
    StopVm(StopKind),
    /// The vCPU was saved and blocked already (it waits for a device model's answer): pick
    /// another.
    Descheduled,
}

/// The hypervisor's busy time per kind of exit, printed after each accounting report.
static EL2_TIME: El2Time = El2Time::new();
/// Each pCPU's idle time in the accounting (counter ticks), for [`EL2_TIME`].
static PCPU_IDLE: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];
/// Each pCPU's current exit: when it trapped, the pCPU's idle time then, its kind.
static EXIT_AT: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];
static EXIT_IDLE_AT: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];
static EXIT_KIND: [AtomicU8; MAX_PCPUS] = [const { AtomicU8::new(0) }; MAX_PCPUS];

/// Charges the time since the last charge on this pCPU to the VM running there (the time a
/// VM's traps take in EL2 counts as that VM's); returns the counter.
fn charge_run_time(pcpu: usize) -> u64 {
    let now = cpu::counter();
    let since = CHARGED_AT[pcpu].swap(now, Ordering::Relaxed);
    if CURRENT[pcpu].load(Ordering::Relaxed) != NO_VCPU {
        let vm = CURRENT_VM[pcpu].load(Ordering::Relaxed);
        ACCOUNTING.add(vm, Counter::RunTicks, now.saturating_sub(since));
    }
    now
}

/// A trap from the VM running on this pCPU: its time so far, and one exit of `kind`, whose
/// EL2 time [`finish`] notes.
fn count_exit(pcpu: usize, kind: ExitKind) {
    let now = charge_run_time(pcpu);
    ACCOUNTING.add(CURRENT_VM[pcpu].load(Ordering::Relaxed), Counter::Exits, 1);
    EXIT_AT[pcpu].store(now, Ordering::Relaxed);
    EXIT_IDLE_AT[pcpu].store(PCPU_IDLE[pcpu].load(Ordering::Relaxed), Ordering::Relaxed);
    EXIT_KIND[pcpu].store(kind.to_u8(), Ordering::Relaxed);
    sampler::leaving_guest(pcpu, now);
}

/// Idle time of this pCPU (the idle loop, a halt poll), in the accounting and for the exit
/// under way.
fn add_idle(pcpu: usize, ticks: u64) {
    ACCOUNTING.add_idle(ticks);
    PCPU_IDLE[pcpu].fetch_add(ticks, Ordering::Relaxed);
}

/// The exit that is ending on this pCPU kept EL2 busy from its trap until now, less the idle
/// time in between.
fn note_el2_time(pcpu: usize) {
    let idle = PCPU_IDLE[pcpu]
        .load(Ordering::Relaxed)
        .saturating_sub(EXIT_IDLE_AT[pcpu].load(Ordering::Relaxed));
    let busy = cpu::counter()
        .saturating_sub(EXIT_AT[pcpu].load(Ordering::Relaxed))
        .saturating_sub(idle);
    let kind = ExitKind::from_u8(EXIT_KIND[pcpu].load(Ordering::Relaxed));
    EL2_TIME.add(kind, busy);
}

/// Installs the state behind the locks. Called once by the primary before any vCPU runs.
pub fn install(hv: Hv, vcpus: Vec<Vcpu>, sched: Scheduler, slice_ticks: u64, pcpus: usize) {
    PCPUS.store(pcpus, Ordering::Relaxed);
    SLICE_TICKS.store(slice_ticks, Ordering::Relaxed);
    LIVE_VMS.store(hv.live_vms(), Ordering::Release);
    let mut hv = hv;
    hv.set_up_spare();
    // The "before" of the free-memory lines every stop prints: nothing may leak.
    hv.log_free_memory();
    for vm in hv.vms.iter().flatten() {
        set_delivery(&mut Unlocked::entry(), vm.id, vm.vcpus.first().copied());
        open_view(&mut Unlocked::entry(), vm);
    }
    crate::locks::install(hv, vcpus, sched);
}

/// Where VM `vm`'s events interrupt from now on: its first vCPU while it runs, `None` once its
/// stop is requested.
fn set_delivery(token: &mut impl MayLockEvents, vm: VmId, to: Option<VcpuId>) {
    if let Some(mut slot) = EventsLocked::lock(token, vm) {
        slot.deliver_to = to;
    }
}

/// EVTCHN_SEND of VM `caller` on its `port` with only event locks held: the caller's table,
/// then the target's, whose pending bit is set (and the interrupt injected) holding the
/// target's lock (see `locks.rs`). `None`: a port bound to the hypervisor, whose answer
/// collection needs the HV lock.
fn send_event(token: &mut Unlocked, caller: VmId, port: u64, pcpu: usize) -> Option<Status> {
    let route = match EventsLocked::lock(token, caller) {
        Some(slot) => slot.ports.route(port),
        None => Err(Status::InvalidArgument),
    };
    let to = match route {
        Ok(Route::Peer(to)) => to,
        Ok(Route::Hypervisor { .. }) => return None,
        Err(e) => return Some(e),
    };
    let Some(mut target) = EventsLocked::lock(token, to.vm) else {
        return Some(Status::BadPort);
    };
    let (slot, etoken) = target.split();
    // `route` accepted `port`, so it is a port number.
    let page = match slot.ports.deliver_from(to.port, caller, port as u32) {
        Ok(page) => page,
        Err(e) => return Some(e),
    };
    // A VM without an event page simply does not hear it.
    let notify =
        page.is_some_and(|page| set_pending(page.words(), to.port) == Some(Delivery::Notify));
    if let (true, Some(first)) = (notify, slot.deliver_to) {
        let _ = inject_to(etoken, first, EVTCHN_INTID, pcpu);
    }
    Some(Status::Ok)
}

/// EVTCHN_UNMASK of VM `caller` on its `port`, holding only the caller's event lock.
fn unmask_event(token: &mut Unlocked, caller: VmId, port: u64, pcpu: usize) -> Status {
    let Some(mut own) = EventsLocked::lock(token, caller) else {
        return Status::InvalidArgument;
    };
    let (slot, etoken) = own.split();
    let page = match slot.ports.unmask(port) {
        Ok(page) => page,
        Err(e) => return e,
    };
    // `unmask` accepted `port`, so it is a port number.
    if clear_mask(page.words(), port as u32) == Some(true) {
        if let Some(first) = slot.deliver_to {
            let _ = inject_to(etoken, first, EVTCHN_INTID, pcpu);
        }
    }
    Status::Ok
}

/// Set when a pCPU is kicked; a halt poll ([`halt_poll`]) watches it instead of taking locks.
static KICKED: [AtomicBool; MAX_PCPUS] = [const { AtomicBool::new(false) }; MAX_PCPUS];

/// Sends `pcpu` the kick SGI (it leaves WFI, or its guest traps), and tells a halt poll there.
fn kick(pcpu: usize) {
    if let Some(flag) = KICKED.get(pcpu) {
        flag.store(true, Ordering::Release);
    }
    gic::kick(pcpu);
}

/// Wakes idle pCPUs so they look at the run queue. True if some pCPU, this one included, is
/// idle (it will pick what is runnable).
fn kick_idle(this_pcpu: usize) -> bool {
    let pcpus = PCPUS.load(Ordering::Relaxed);
    let mut any_idle = false;
    for (pcpu, idle) in IDLE.iter().enumerate().take(pcpus) {
        if idle.load(Ordering::Acquire) {
            any_idle = true;
            if pcpu != this_pcpu {
                kick(pcpu);
            }
        }
    }
    any_idle
}

/// Per pCPU: the vCPU asked to give way to a woken one ([`NO_VCPU`] if none), and from when
/// (counter ticks); see `sched`'s wake-up preemption. Acted on by that pCPU in
/// [`finish_action`]; cleared when the vCPU leaves, so a vCPU loaded there since is not the
/// one preempted.
static GIVE_WAY: [AtomicUsize; MAX_PCPUS] = [const { AtomicUsize::new(NO_VCPU) }; MAX_PCPUS];
static GIVE_WAY_AT: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];

/// Makes a vCPU with a newly queued interrupt notice it: wakes it from WFI, or kicks the pCPU
/// it runs on. A woken vCPU that finds no pCPU idle may have a running one give way to it.
fn wake_for_interrupt(sched: &mut Scheduler, id: VcpuId, this_pcpu: usize) {
    match sched.state(id) {
        RunState::Blocked { .. } => {
            sched.wake(id);
            if !kick_idle(this_pcpu) {
                if let Some(give_way) = sched.preemption_victim(id, cpu::counter()) {
                    ask_to_give_way(give_way, this_pcpu);
                }
            }
        }
        RunState::Running { pcpu } if pcpu != this_pcpu => kick(pcpu),
        _ => {}
    }
}

/// Asks a busy running vCPU to give way (`sched`'s wake-up preemption), and kicks its pCPU (it
/// may be spinning without a trap): that exit gives way if the request is due, or brings the
/// EL2 timer forward to when it is. On this pCPU the exit under way sees it.
fn ask_to_give_way(give_way: GiveWay, this_pcpu: usize) {
    let (Some(at), Some(slot)) = (GIVE_WAY_AT.get(give_way.pcpu), GIVE_WAY.get(give_way.pcpu))
    else {
        return;
    };
    at.store(give_way.at, Ordering::Relaxed);
    slot.store(give_way.vcpu, Ordering::Release);
    if give_way.pcpu != this_pcpu {
        kick(give_way.pcpu);
    }
}

/// Whether the vCPU `id`, running here and about to go on, gives way now; if it was asked to
/// from a later time, the EL2 timer is brought forward to then (that exit decides).
fn gives_way(pcpu: usize, id: VcpuId) -> bool {
    if id == NO_VCPU || GIVE_WAY.get(pcpu).map(|slot| slot.load(Ordering::Acquire)) != Some(id) {
        return false;
    }
    let at = GIVE_WAY_AT[pcpu].load(Ordering::Relaxed);
    if cpu::counter() >= at {
        GIVE_WAY[pcpu].store(NO_VCPU, Ordering::Relaxed);
        return true;
    }
    if cpu::hyp_timer_deadline().is_none_or(|deadline| at < deadline) {
        cpu::set_hyp_timer(at);
    }
    false
}

/// Queues a virtual interrupt for the locked vCPU `id` and wakes it if it sleeps in WFI.
fn inject(vcpu: &mut VcpuLocked, id: VcpuId, intid: u32, this_pcpu: usize) -> Result<(), Status> {
    // Level-style sources: one queued copy is enough, since the guest's handler looks at the
    // source (the timer, or every pending port) rather than counting interrupts.
    let pushed =
        if intid == intid::VIRTUAL_TIMER || intid == EVTCHN_INTID || intid == intid::EMULATED_NIC {
            vcpu.virqs.push_unique(intid)
        } else {
            vcpu.virqs.push(intid)
        };
    pushed.map_err(|_| Status::NoSpace)?;
    ACCOUNTING.add(vcpu.run.vm_id, Counter::Virqs, 1);
    wake_for_interrupt(&mut SchedLocked::lock(vcpu.token()), id, this_pcpu);
    Ok(())
}

/// [`inject`] into vCPU `id`, taking its lock.
fn inject_to(
    token: &mut impl MayLockVcpu,
    id: VcpuId,
    intid: u32,
    this_pcpu: usize,
) -> Result<(), Status> {
    let mut vcpu = VcpuLocked::lock(token, id).ok_or(Status::InvalidArgument)?;
    inject(&mut vcpu, id, intid, this_pcpu)
}

/// Refills the live list registers of the running vCPU (after new interrupts were queued).
fn refill_live(vcpu: &mut Vcpu) {
    vcpu.vgic.save();
    let waiting = vcpu.virqs.refill(&mut vcpu.vgic.lrs);
    vcpu.vgic.hcr = if waiting { ICH_HCR_UIE } else { 0 };
    vcpu.vgic.restore();
}

/// Saves the running vCPU's state from the CPU into its structure.
fn save(vcpu: &mut Vcpu, frame: &TrapFrame) {
    vcpu.frame = *frame;
    vcpu.el1 = El1Context::save();
    vcpu.fp.save();
    vcpu.vgic.save();
    crate::gicv4::leave();
    // Its list registers must not raise maintenance interrupts while another vCPU (or the idle
    // loop) owns this pCPU.
    VgicContext::quiesce();
    // A vCPU that is not running must not have its timer fire on this pCPU.
    cpu::set_vtimer_ctl(0);
}

/// Loads the locked vCPU `id` onto this pCPU; `frame` becomes its register file.
fn load(pcpu: usize, id: VcpuId, vcpu: &mut VcpuLocked, frame: &mut TrapFrame) {
    let (v, token) = vcpu.split();
    CURRENT_VM[pcpu].store(v.run.vm_id, Ordering::Relaxed);
    if cpu::vttbr_vmid() != v.run.vmid {
        ACCOUNTING.add(v.run.vm_id, Counter::VmidSwitches, 1);
    }
    cpu::set_vttbr(v.run.vmid, v.run.stage2_root);
    if v.run.flush_vmid {
        mem::tlbi_current_vmid_all();
        v.run.flush_vmid = false;
    }
    cpu::set_vmpidr(v.index);
    v.el1.restore();
    v.fp.restore();
    let waiting = v.virqs.refill(&mut v.vgic.lrs);
    v.vgic.hcr = if waiting { ICH_HCR_UIE } else { 0 };
    v.vgic.restore();
    crate::gicv4::enter(id, pcpu);
    *frame = v.frame;
    CURRENT[pcpu].store(id, Ordering::Relaxed);
    CHARGED_AT[pcpu].store(cpu::counter(), Ordering::Relaxed);
    arm_timer(&SchedLocked::lock(token), cpu::counter());
}

/// Programs the EL2 timer for the end of this slice or the earliest blocked deadline.
/// (Or the pCPU's next profiling sample, if that comes first: `sampler`.)
fn arm_timer(sched: &Scheduler, now: u64) {
    let slice_end = now + SLICE_TICKS.load(Ordering::Relaxed);
    let deadline = sched
        .earliest_deadline()
        .map_or(slice_end, |d| d.min(slice_end));
    let deadline = sampler::timer_deadline(cpu::pcpu_index(), Some(deadline)).unwrap_or(deadline);
    cpu::set_hyp_timer(deadline);
}

/// Wakes the vCPUs whose WFI deadline has passed (and the idle pCPUs to run them).
fn wake_expired(token: &mut impl MayLockSched, pcpu: usize) {
    if SchedLocked::lock(token).wake_expired(cpu::counter()) > 0 {
        kick_idle(pcpu);
    }
}

impl Hv {
    /// The VM of vCPU `id`; `None` once the VM has been torn down.
    pub fn vm_of(&self, id: VcpuId) -> Option<&Vm> {
        self.vms.get(*self.vcpu_vm.get(id)?)?.as_ref()
    }

    /// The VM's name for log lines, or a placeholder for a vCPU whose VM is gone.
    fn name_of(&self, id: VcpuId) -> String {
        self.vm_of(id)
            .map_or_else(|| String::from("(stopped VM)"), |vm| vm.name.clone())
    }

    pub fn live_vms(&self) -> usize {
        self.vms.iter().filter(|v| v.is_some()).count() + self.reloading
    }

    /// Grant and event-channel hypercalls of vCPU `id` ([`sharing_call`] over this machine):
    /// the status for x0 and, for calls that return a port, the value for x1.
    fn sharing_call(
        &mut self,
        token: &mut HvHeld,
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
            connections,
            ..
        } = &mut self.sharing;
        let mut env = Env {
            vms: &mut self.vms[..],
            frames: &mut self.frames,
            iommu: &mut self.iommu,
            connections,
        };
        let answer = sharing_call(grants, &mut events(token), &mut env, caller, function, x);
        if function == hypercall::GRANT_TABLE_SETUP && answer.status == Status::Ok {
            // Copies of its refs check the table in its copy view from now on.
            publish_table(token, caller, self.sharing.grants.table(caller));
        }
        self.sharing.release(&mut self.frames, &answer.released);
        if let Some(vm) = answer.notify {
            self.notify(token, Notify { vm }, pcpu);
        }
        if let Some(client) = answer.answers_from_device_model {
            self.collect_answers(token, caller, client, pcpu);
        }
        (answer.status, answer.x1)
    }

    /// Raises the event-channel interrupt on a VM's first vCPU.
    fn notify(&self, token: &mut HvHeld, notify: Notify, pcpu: usize) {
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
        if let Some(&first) = vm.vcpus.first() {
            let _ = inject_to(token, first, EVTCHN_INTID, pcpu);
        }
    }

    /// The passed-through function raised its INTx line `raw` (acknowledged, priority dropped,
    /// still active): hand it to the owner's vCPU 0 with the hardware bit, or deactivate it at
    /// once if the owner cannot take it (stopping, off, or its queue is full), so the line is
    /// not lost forever.
    fn inject_passthrough_intx(&self, token: &mut HvHeld, raw: u32, this_pcpu: usize) {
        let owner = self
            .passthrough
            .as_ref()
            .map(|p| p.owner_id)
            .and_then(|id| self.vms.get(usize::from(id).wrapping_sub(1)))
            .and_then(Option::as_ref)
            .filter(|vm| vm.stop.is_none())
            .and_then(|vm| vm.vcpus.first().copied());
        let Some(id) = owner else {
            gic::deactivate(raw);
            return;
        };
        let Some(mut vcpu) = VcpuLocked::lock(token, id) else {
            gic::deactivate(raw);
            return;
        };
        // Decided under the vCPU's lock, which CPU_OFF and reset hold while they hand back the
        // lines the vCPU held: a vCPU that is off would only hold the line until it is reset, so
        // it is released now (INTx is level-triggered: a device still asserting it interrupts
        // again).
        let (v, vtoken) = vcpu.split();
        let mut sched = SchedLocked::lock(vtoken);
        let queued = sched.state(id) != RunState::Off
            && v.virqs.push_hw(intid::PASSTHROUGH_INTX, raw).is_ok();
        if queued {
            wake_for_interrupt(&mut sched, id, this_pcpu);
        } else {
            gic::deactivate(raw);
        }
    }

    /// The emulated connection of guest `client`, if it has an emulated NIC.
    fn emulated_connection(&self, client: VmId) -> Option<&crate::sharing::Connection> {
        self.sharing
            .connections
            .iter()
            .find(|c| c.frontend == client && c.kind == ConnectionKind::Emulated)
    }

    /// VM `id` if it exists and is not stopping.
    fn running_vm(&self, id: VmId) -> Option<&Vm> {
        self.vms
            .get(usize::from(id).wrapping_sub(1))?
            .as_ref()
            .filter(|vm| vm.stop.is_none())
    }

    /// vCPU `id` (running on `pcpu`, its registers in `frame`) accessed its emulated NIC's
    /// window at `offset`: the access becomes an I/O request to the device model, and the vCPU
    /// waits for the answer (`Ok(true)`: it is saved and blocked). With no device model
    /// running, the hypervisor answers as an absent device at once (`Ok(false)`); a vCPU whose
    /// VM is stopping is left as it is (`Ok(false)`, and `finish` stops it). `Err` says why the
    /// guest must be killed.
    fn forward_to_device_model(
        &self,
        token: &mut HvHeld,
        id: VcpuId,
        offset: u64,
        esr: u64,
        frame: &mut TrapFrame,
        pcpu: usize,
    ) -> Result<bool, String> {
        let client = self.vm_of(id).ok_or("the VM is gone")?.id;
        let conn = self
            .emulated_connection(client)
            .ok_or("no device at this address (this VM has no emulated NIC)")?;
        let access = esr::mmio_access(esr).map_err(|e| format!("emulated NIC: {e}"))?;
        ACCOUNTING.add(client, Counter::Ioreqs, 1);
        let device_model_runs = conn.backend_port != shared_abi::evtchn::NO_PORT
            && self.running_vm(conn.backend).is_some();
        if !device_model_runs {
            ioreq::complete(&access, ABSENT_DEVICE_READ, &mut frame.x, &mut frame.elr);
            return Ok(false);
        }
        let Some(mut vcpu) = VcpuLocked::lock(token, id) else {
            return Err(String::from("the vCPU is gone"));
        };
        let (v, vtoken) = vcpu.split();
        if v.run.stopping {
            // Its VM is stopping: the vCPU must not start waiting (nothing would finish the
            // stop if the device model never answered); `finish` stops it instead.
            return Ok(false);
        }
        let request = ioreq::request_of(&access, offset, &frame.x);
        shared_abi::ioreq::post(conn.page.atomics(), v.index as usize, request)
            .map_err(|e| format!("emulated NIC: {e}"))?;
        v.io = Some(access);
        // Saved and blocked under the vCPU's lock, so the answer (which takes that lock) finds
        // it waiting with its registers in place.
        save(v, frame);
        SchedLocked::lock(vtoken).block_io(id, cpu::counter());
        drop(vcpu);
        if let Some(notify) = set_port_pending(&mut events(token), conn.backend, conn.backend_port)
        {
            self.notify(token, notify, pcpu);
        }
        Ok(true)
    }

    /// Device model `caller` signalled the request port of guest `client`: every vCPU of the
    /// guest that waits for an answer and has one in its slot resumes with it. Slots without a
    /// request outstanding are not looked at, so a stray answer does nothing.
    fn collect_answers(&self, token: &mut HvHeld, caller: VmId, client: VmId, pcpu: usize) {
        let Some(conn) = self
            .emulated_connection(client)
            .filter(|c| c.backend == caller)
        else {
            return;
        };
        let page = conn.page.atomics();
        self.complete_requests(token, client, pcpu, |slot| {
            take_response(page, slot).ok().flatten()
        });
    }

    /// Completes each waiting I/O request of guest `client` for which `answer(slot)` has a
    /// value, and makes those vCPUs runnable.
    fn complete_requests(
        &self,
        token: &mut HvHeld,
        client: VmId,
        pcpu: usize,
        mut answer: impl FnMut(usize) -> Option<u64>,
    ) {
        let Some(vm) = self
            .vms
            .get(usize::from(client).wrapping_sub(1))
            .and_then(Option::as_ref)
        else {
            return;
        };
        let mut woke = false;
        for &id in &vm.vcpus {
            let Some(mut vcpu) = VcpuLocked::lock(token, id) else {
                continue;
            };
            let (v, vtoken) = vcpu.split();
            let Some(access) = v.io else {
                continue;
            };
            let mut sched = SchedLocked::lock(vtoken);
            if sched.state(id) != RunState::WaitingIo {
                continue;
            }
            let Some(data) = answer(v.index as usize) else {
                continue;
            };
            ioreq::complete(&access, data, &mut v.frame.x, &mut v.frame.elr);
            v.io = None;
            woke |= sched.wake_io(id);
        }
        if woke {
            kick_idle(pcpu);
        }
    }

    /// IOREQ_SET_IRQ from VM `caller`: the emulated NIC's interrupt for guest `guest`.
    fn set_emulated_irq(
        &self,
        token: &mut HvHeld,
        caller: VmId,
        guest: u64,
        pcpu: usize,
    ) -> Status {
        let Some(guest) = VmId::try_from(guest)
            .ok()
            .filter(|&g| g != 0 && usize::from(g) <= self.vms.len())
        else {
            return Status::InvalidArgument;
        };
        if self
            .emulated_connection(guest)
            .is_none_or(|c| c.backend != caller)
        {
            return Status::Denied;
        }
        // A guest that is stopping hears nothing; the device model did nothing wrong.
        let Some(&first) = self.running_vm(guest).and_then(|vm| vm.vcpus.first()) else {
            return Status::Ok;
        };
        match inject_to(token, first, intid::EMULATED_NIC, pcpu) {
            Ok(()) => Status::Ok,
            Err(status) => status,
        }
    }

    /// Asks every vCPU of a VM to stop; the VM is finished once none of them is running.
    fn request_stop(&mut self, token: &mut HvHeld, vm_index: usize, kind: StopKind, pcpu: usize) {
        // A device model that stops answers no more: its guests' waiting accesses complete as
        // an absent device's, so none of them waits on the dead.
        let stopping_id = self
            .vms
            .get(vm_index)
            .and_then(Option::as_ref)
            .map(|vm| vm.id);
        if let Some(stopping_id) = stopping_id {
            // Its events from now on only mark its page (see `notify`).
            set_delivery(token, stopping_id, None);
            let clients: Vec<VmId> = self
                .sharing
                .connections
                .iter()
                .filter(|c| c.backend == stopping_id && c.kind == ConnectionKind::Emulated)
                .map(|c| c.frontend)
                .collect();
            for client in clients {
                self.complete_requests(token, client, pcpu, |_| Some(ABSENT_DEVICE_READ));
            }
        }
        let Some(vm) = self.vms.get_mut(vm_index).and_then(Option::as_mut) else {
            return;
        };
        let kind = if vm.stop.is_none() {
            crash_policy(vm, kind)
        } else {
            kind
        };
        if vm.stop.is_none() || matches!(kind, StopKind::Killed(_)) {
            vm.stop = Some(kind);
        }
        for &id in &vm.vcpus {
            let Some(mut vcpu) = VcpuLocked::lock(token, id) else {
                continue;
            };
            // Seen by a pCPU that picked the vCPU and is about to load it: it stops it instead.
            vcpu.run.stopping = true;
            let mut sched = SchedLocked::lock(vcpu.token());
            match sched.state(id) {
                RunState::Running { pcpu: other } if other != pcpu => kick(other),
                RunState::Running { .. } => {}
                _ => sched.stop(id, cpu::counter()),
            }
        }
    }

    /// Completes a requested stop when no vCPU of the VM runs any more. A restart is completed
    /// by the caller: it reloads the returned VM's RAM after releasing the lock, then calls
    /// [`Hv::reinstall`].
    #[must_use]
    fn try_finish_stop(
        &mut self,
        token: &mut HvHeld,
        vm_index: usize,
        pcpu: usize,
    ) -> Option<Reload> {
        let vm = self.vms.get(vm_index).and_then(Option::as_ref)?;
        let mut kind = vm.stop.clone()?;
        let vcpu_ids = vm.vcpus.clone();
        {
            let sched = SchedLocked::lock(token);
            if vcpu_ids
                .iter()
                .any(|&id| matches!(sched.state(id), RunState::Running { .. }))
            {
                return None;
            }
        }
        let vm_id = vm.id;
        // A peer's GRANT_COPY may still be copying into or out of its RAM (checked before the
        // stop, running with no lock): it finishes before the RAM is freed, reloaded or
        // replaced. No new one can start: its copy view is closed first (copies check it, not
        // the HV lock), and opens again only on its next incarnation's RAM.
        close_view(token, vm_id);
        wait_for_copies(vm_id);
        // Its RAM as it stands: minus the pages it gave back to the balloon.
        let kept_runs = vm.kept_ram_runs();
        let gave_pages = vm.balloon.given_pages() > 0;
        if let Some(t) = self.vms[vm_index]
            .as_mut()
            .and_then(|vm| vm.timeline.as_mut())
        {
            t.mark(Mark::Stop, cpu::counter());
        }
        // No vCPU of this incarnation runs again: a CPU_ON that slipped in before the stop was
        // requested (or a stale run-queue entry) must not resurrect one, and the device lines
        // its vCPUs held are released.
        for &id in &vcpu_ids {
            if let Some(mut vcpu) = VcpuLocked::lock(token, id) {
                let (v, vtoken) = vcpu.split();
                v.run.stopping = true;
                v.release_hardware_interrupts();
                SchedLocked::lock(vtoken).stop(id, cpu::counter());
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
            crate::gicv4::vm_stopped(vm_id);
            if let Some(vm) = self.vms[vm_index].as_mut() {
                crate::gicv4::unmap_msi_window(vm, &mut self.frames, Some(&mut self.iommu));
            }
        }
        // The pages the balloon gave it go back to the credit; the next incarnation, if any,
        // starts with its RAM from the topology only.
        if let Some(vm) = self.vms[vm_index].as_mut() {
            self.balloon_credit += vm.drop_populated(&mut self.frames, &mut self.iommu);
        }
        // A restart while peers still map frames of its RAM needs fresh RAM, and so does one
        // after it gave pages back to the balloon (those frames are someone else's). It is decided
        // before the sharing teardown, so that a restart that cannot happen is torn down as a
        // stop for good and the peers are told the VM is gone rather than left waiting for an
        // incarnation that never comes.
        let mut replaced_ram = None;
        // The NIC's driver domain swaps in its warm spare of RAM, zeroed ahead of time, instead
        // of zeroing its RAM now; the old RAM becomes the next spare (below).
        let warm = kind == StopKind::Reset && self.swap_in_spare(vm_index, &mut replaced_ram);
        if replaced_ram.is_none()
            && kind == StopKind::Reset
            && (self.sharing.grants.lent_count(vm_id) > 0 || gave_pages)
        {
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
        // The pages peers map now: all a dead incarnation keeps for them (see `retain` below).
        let lent_pages = ram_pages_of_frames(
            &self.sharing.grants.lent_frames(vm_id),
            self.vms[vm_index]
                .as_ref()
                .map_or(0, |vm| vm.ram_bytes / PAGE_SIZE),
        );
        // Forgets its ports and event page under its event lock: a sender in flight (which
        // holds that lock while it writes the page) has finished, and none writes the page
        // again. Its old RAM, even if replaced above, is freed or handed on only below.
        let stopped = self.sharing.vm_stopped(
            &mut events(token),
            &mut self.vms,
            &mut self.frames,
            &mut self.iommu,
            vm_id,
            restart,
        );
        self.sharing.release(&mut self.frames, &stopped.released);
        for notify in &stopped.notify {
            self.notify(token, *notify, pcpu);
        }
        // RAM at `pa` that peers still map: only the pages they map are kept until the last
        // mapping goes, the rest is freed now. (Keeping all of it let two guests fill the host's
        // memory: one lends a page to the other, which keeps it mapped, and resets over and
        // over, each reset keeping a whole copy of its RAM.)
        let release = RamRelease {
            vm: vm_id,
            incarnation: stopped.incarnation,
        };
        let retain = |frames: &mut FrameAllocator, pa| {
            let (free_now, lent) = split_lent(&kept_runs, &lent_pages);
            free_kept_runs(frames, pa, &free_now);
            RetainedRam {
                release,
                pa,
                kept: lent,
            }
        };
        let mut vm = self.vms[vm_index].take()?;
        flush_vm_console(vm_id);
        match kind {
            StopKind::Reset => {
                if let Some(old_pa) = replaced_ram {
                    if stopped.ram_free_now && warm && !gave_pages {
                        // Whole and no one maps it: the next spare, once idle pCPUs zero it.
                        self.set_dirty_spare(SpareRam::dirty(vm_id, old_pa, vm.ram_bytes));
                    } else if stopped.ram_free_now {
                        free_kept_runs(&mut self.frames, old_pa, &kept_runs);
                    } else {
                        let kept = retain(&mut self.frames, old_pa);
                        self.sharing.retained.push(kept);
                    }
                }
                if warm && self.spare.is_none() {
                    self.new_spare(vm_id, &vm.name, vm.ram_bytes);
                }
                vm.balloon = vm.balloon.renewed();
                info!(
                    "VM {} restarting (boot {}){}",
                    vm.name,
                    vm.boots + 1,
                    if warm {
                        " on its warm spare of RAM"
                    } else {
                        ""
                    }
                );
                vm.stop = None;
                if let Some(t) = vm.timeline.as_mut() {
                    t.mark(Mark::Teardown, cpu::counter());
                }
                self.reloading += 1;
                return Some(Reload {
                    vm_index,
                    vm,
                    owns_device,
                    warm,
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
                // Its warm spare goes back to the free memory (once no chunk is being zeroed).
                if let Some(spare) = self.spare.as_mut().filter(|s| s.owner == vm_id) {
                    if spare.retire() {
                        self.free_spare();
                    }
                }
                if let StopKind::Killed(reason) = &kind {
                    if reason.starts_with("cannot restart") {
                        error!("VM {name}: {reason}; it stays stopped and its peers are told");
                    }
                }
                // RAM that peers still map stays readable to them until they unmap.
                if let Some(kept) =
                    vm.destroy(&mut self.frames, &mut self.iommu, stopped.ram_free_now)
                {
                    let kept = retain(&mut self.frames, kept);
                    self.sharing.retained.push(kept);
                }
                let _ = self.vmids.free(vmid);
                let live = self.live_vms();
                LIVE_VMS.store(live, Ordering::Release);
                info!("VM {name} stopped ({how}); {live} VM(s) still running");
                self.log_free_memory();
            }
        }
        None
    }

    /// Puts a VM reloaded by [`reload_outside_lock`] back and starts its first vCPU.
    fn reinstall(&mut self, token: &mut HvHeld, reload: Reload, pcpu: usize) {
        let Reload {
            vm_index,
            mut vm,
            owns_device,
            ..
        } = reload;
        self.reloading -= 1;
        // Before its first vCPU can run: its copies check this view.
        open_view(token, &vm);
        if owns_device {
            if let Some(p) = self.passthrough.as_mut() {
                p.owner_restarted(&mut self.iommu, &vm);
            }
            crate::gicv4::vm_started(vm.id);
        }
        let info_gpa = shared_abi::layout::start_info_gpa(vm.ram_bytes);
        for (index, &id) in vm.vcpus.iter().enumerate() {
            let Some(mut vcpu) = VcpuLocked::lock(token, id) else {
                continue;
            };
            let (v, vtoken) = vcpu.split();
            v.run.stopping = false;
            if index == 0 {
                v.reset(GUEST_RAM_BASE, info_gpa);
                let mut sched = SchedLocked::lock(vtoken);
                if vm.start_delay_ms == 0 {
                    sched.wake(id);
                } else {
                    let delay = cpu::counter_frequency() * vm.start_delay_ms / 1000;
                    sched.start_at(id, cpu::counter() + delay);
                }
                drop(sched);
                kick_idle(pcpu);
            }
        }
        vm.start_delay_ms = 0;
        set_delivery(token, vm.id, vm.vcpus.first().copied());
        if let Some(mut t) = vm.timeline.take() {
            t.mark(Mark::Start, cpu::counter());
            info!("{}", t.line(&vm.name, cpu::counter_frequency()));
        }
        self.vms[vm_index] = Some(vm);
    }

    /// This pCPU's vCPU `id` stops: saved (so the teardown sees, and releases, the interrupts
    /// its list registers held), off, and its VM finished if it was the last one running.
    fn stop_current(
        &mut self,
        token: &mut HvHeld,
        id: VcpuId,
        frame: &TrapFrame,
        pcpu: usize,
    ) -> Option<Reload> {
        if let Some(mut vcpu) = VcpuLocked::lock(token, id) {
            let (v, vtoken) = vcpu.split();
            save(v, frame);
            SchedLocked::lock(vtoken).stop(id, cpu::counter());
        }
        let vm_index = *self.vcpu_vm.get(id)?;
        self.try_finish_stop(token, vm_index, pcpu)
    }
}

/// Zeroes and reloads a restarting VM's RAM with no lock held, then puts it back; a VM whose
/// reload fails is put back stopping, and torn down for good (its peers are told).
fn reload_outside_lock(entry: &mut Unlocked, mut reload: Reload, pcpu: usize) {
    let vcpus = reload.vm.vcpus.len() as u32;
    let loaded = reload.vm.load_memory(vcpus, reload.warm);
    let mut locked = HvLocked::lock(entry);
    let (hv, token) = locked.split();
    match loaded {
        Ok(()) => hv.reinstall(token, reload, pcpu),
        Err(e) => {
            let vm_index = reload.vm_index;
            let why = format!("cannot restart: reloading its memory failed ({e})");
            error!("VM {}: {why}", reload.vm.name);
            reload.vm.stop = Some(StopKind::Killed(why));
            hv.reloading -= 1;
            hv.vms[vm_index] = Some(reload.vm);
            // Every vCPU is off, so this completes the stop at once (and restarts nothing).
            let _ = hv.try_finish_stop(token, vm_index, pcpu);
        }
    }
}

/// Runs `f` under the HV lock.
pub(crate) fn with_hv<R>(entry: &mut Unlocked, f: impl FnOnce(&mut Hv, &mut HvHeld) -> R) -> R {
    let mut locked = HvLocked::lock(entry);
    let (hv, token) = locked.split();
    f(hv, token)
}

/// A pCPU's entry into the scheduler at boot: waits for a runnable vCPU and enters it.
pub fn run_first(pcpu: usize) -> ! {
    let mut frame = TrapFrame::default();
    schedule(&mut Unlocked::entry(), pcpu, &mut frame);
    sampler::entering_guest(pcpu);
    crate::arch::vectors::enter_guest(&frame)
}

/// Picks the next vCPU for this pCPU and loads it into `frame`, sleeping while there is none.
/// Powers the machine off when every VM has stopped.
fn schedule(entry: &mut Unlocked, pcpu: usize, frame: &mut TrapFrame) {
    charge_run_time(pcpu);
    CURRENT[pcpu].store(NO_VCPU, Ordering::Relaxed);
    // The vCPU that ran here has left: a request that it give way is moot (one for the vCPU
    // picked next can only come after the pick, under the scheduler's lock).
    GIVE_WAY[pcpu].store(NO_VCPU, Ordering::Relaxed);
    loop {
        let (picked, deadline) = {
            let mut sched = SchedLocked::lock(entry);
            sched.wake_expired(cpu::counter());
            match sched.pick(pcpu, cpu::counter()) {
                Some(id) => (Some(id), None),
                None => {
                    IDLE[pcpu].store(true, Ordering::Release);
                    (None, sched.earliest_deadline())
                }
            }
        };
        if let Some(id) = picked {
            let Some(mut vcpu) = VcpuLocked::lock(entry, id) else {
                continue;
            };
            if !vcpu.run.stopping {
                IDLE[pcpu].store(false, Ordering::Release);
                load(pcpu, id, &mut vcpu, frame);
                return;
            }
            // Its VM stopped between the pick and now: it stays off, and if it was the last of
            // its VM's vCPUs the pick made look running, the stop is completed here.
            SchedLocked::lock(vcpu.token()).stop(id, cpu::counter());
            drop(vcpu);
            let reload = with_hv(entry, |hv, token| {
                let vm_index = *hv.vcpu_vm.get(id)?;
                hv.try_finish_stop(token, vm_index, pcpu)
            });
            if let Some(reload) = reload {
                reload_outside_lock(entry, reload, pcpu);
            }
            continue;
        }
        if LIVE_VMS.load(Ordering::Acquire) == 0 {
            // The last stop's lines, kept under the HV lock, are printed first.
            drop(HvLocked::lock(entry));
            crate::logger::wait_for_kept_lines();
            sampler::print_final();
            info!("{}", EL2_TIME.line(cpu::counter_frequency()));
            info!("all VMs have stopped; powering off");
            cpu::system_off();
        }
        // Idle: zero a chunk of the warm spare of RAM, if one is left, and look again.
        if crate::spare::scrub_a_chunk(entry) {
            continue;
        }
        match sampler::timer_deadline(pcpu, deadline) {
            Some(d) => cpu::set_hyp_timer(d),
            None => cpu::stop_hyp_timer(),
        }
        let slept_at = cpu::counter();
        cpu::wait_for_interrupt();
        add_idle(pcpu, cpu::counter().saturating_sub(slept_at));
        // Whatever woke us (kick, timer, a stale guest timer, a doorbell) only needs
        // acknowledging and ending; a doorbell also wakes its vCPU.
        while let Some(id) = gic::acknowledge() {
            if gic::is_special(id) {
                break;
            }
            match id {
                gic::HYP_TIMER_PPI => {
                    cpu::stop_hyp_timer();
                    sampler::from_idle(pcpu, slept_at);
                }
                gic::MAINTENANCE_PPI | gic::VTIMER_PPI | gic::KICK_SGI => {}
                other => {
                    device_irq(entry, other, pcpu);
                    continue;
                }
            }
            gic::end(id);
        }
    }
}

/// Balloon targets (issue 16): applies the schedule points that are due and raises
/// `TARGET_INTID` in each VM whose target changed. One atomic compare when nothing is due.
fn balloon_targets(entry: &mut Unlocked, pcpu: usize) {
    let now = cpu::counter();
    if !crate::ballooning::targets_due(now) {
        return;
    }
    let tell = with_hv(entry, |hv, _| {
        hv.apply_balloon_targets(now, cpu::counter_frequency())
    });
    for vcpu in tell {
        let _ = inject_to(entry, vcpu, intid::TARGET_INTID, pcpu);
    }
}

/// Re-arms this pCPU's EL2 timer after a sample-only tick: the scheduling deadline it was
/// armed for (or a blocked vCPU's earlier one), or the next sample.
fn rearm_timer(entry: &mut Unlocked) {
    let sched = SchedLocked::lock(entry);
    let pcpu = cpu::pcpu_index();
    let slice_end = sampler::slice_deadline(pcpu);
    let deadline = sched
        .earliest_deadline()
        .map_or(slice_end, |d| d.min(slice_end));
    let deadline = sampler::timer_deadline(pcpu, Some(deadline)).unwrap_or(deadline);
    cpu::set_hyp_timer(deadline);
}

/// Applies `action` for the vCPU that trapped on this pCPU, which then leaves for a guest.
fn finish(entry: &mut Unlocked, pcpu: usize, frame: &mut TrapFrame, action: Action) {
    finish_action(entry, pcpu, frame, action);
    note_el2_time(pcpu);
    sampler::entering_guest(pcpu);
}

fn finish_action(entry: &mut Unlocked, pcpu: usize, frame: &mut TrapFrame, action: Action) {
    let id = CURRENT[pcpu].load(Ordering::Relaxed);
    // A woken vCPU asked this one to give way.
    let action = match action {
        Action::Continue if gives_way(pcpu, id) => Action::GiveWay,
        action => action,
    };
    wake_expired(entry, pcpu);
    balloon_targets(entry, pcpu);
    let reload = match action {
        Action::StopVm(kind) => with_hv(entry, |hv, token| {
            let vm_index = *hv.vcpu_vm.get(id)?;
            hv.request_stop(token, vm_index, kind, pcpu);
            hv.stop_current(token, id, frame, pcpu)
        }),
        Action::VcpuOff => with_hv(entry, |hv, token| {
            let vm_index = *hv.vcpu_vm.get(id)?;
            if let Some(mut vcpu) = VcpuLocked::lock(token, id) {
                let (v, vtoken) = vcpu.split();
                save(v, frame);
                v.release_hardware_interrupts();
                SchedLocked::lock(vtoken).stop(id, cpu::counter());
            }
            let all_off = {
                let sched = SchedLocked::lock(token);
                hv.vm_of(id)
                    .is_some_and(|vm| vm.vcpus.iter().all(|&v| sched.state(v) == RunState::Off))
            };
            if all_off {
                info!("VM {}: every vCPU is off", hv.name_of(id));
                hv.request_stop(token, vm_index, StopKind::PowerOff, pcpu);
            }
            hv.try_finish_stop(token, vm_index, pcpu)
        }),
        Action::Descheduled => None,
        action => {
            if matches!(action, Action::Wait) {
                halt_poll(entry, id, pcpu);
            }
            let Some(mut vcpu) = VcpuLocked::lock(entry, id) else {
                return;
            };
            if vcpu.run.stopping {
                // Another vCPU asked the VM to stop: this one stops too, whatever it trapped
                // for.
                drop(vcpu);
                with_hv(entry, |hv, token| hv.stop_current(token, id, frame, pcpu))
            } else if keep_running(&mut vcpu, id, frame, action) {
                return;
            } else {
                None
            }
        }
    };
    if let Some(reload) = reload {
        reload_outside_lock(entry, reload, pcpu);
    }
    schedule(entry, pcpu, frame);
}

/// How long a vCPU that executed WFI stays loaded, waiting for an interrupt, before it blocks:
/// KVM's halt polling. Under QEMU a blocked vCPU's wake-up costs a host thread wake-up (a kick)
/// and, if another VM ran there meanwhile, a cold TLB; an event that comes back within the
/// window costs neither.
const HALT_POLL_US: u64 = 50;

/// Which halt poll a vCPU that executed WFI makes ([`halt_poll`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum HaltPoll {
    /// Nothing else is runnable: the pCPU is idle while it polls (any wake-up ends the poll).
    Idle,
    /// Others are runnable, but all of them have run more than the scheduler's granularity
    /// longer than this vCPU (`Scheduler::behind_every_runnable`): a light VM in a round trip
    /// beside busy ones. It keeps the pCPU for the poll, its own time, and only its own
    /// interrupt ends it; the poll is charged to it, so a VM that polls a lot catches up in
    /// run time and stops doing so.
    AheadOfQueue,
}

/// Before vCPU `id` (running here, which trapped on WFI) blocks: waits up to [`HALT_POLL_US`]
/// for a kick, if no other vCPU is runnable or every runnable one has run much longer
/// ([`HaltPoll`]). Only a delay: what the vCPU does next is decided by [`keep_running`] as
/// before. While an idle poll spins the pCPU counts as idle (in the accounting too: the poll is
/// charged as idle time, not to the VM), so a vCPU that becomes runnable kicks it
/// ([`kick_idle`]), as does an interrupt queued for this vCPU ([`wake_for_interrupt`]); the
/// loop reads one flag and the counter, and takes no lock. The kick SGI stays pending and is
/// taken (and ignored) when the vCPU runs on or the pCPU idles.
fn halt_poll(entry: &mut Unlocked, id: VcpuId, pcpu: usize) {
    let Some(kicked) = KICKED.get(pcpu) else {
        return;
    };
    // A resident vPE's vLPIs would wait for the poll's end unseen (they kick nobody): a VM on
    // direct injection blocks at once, and its vPE's exit rings the doorbell.
    if crate::gicv4::resident_on(pcpu) {
        return;
    }
    kicked.store(false, Ordering::Relaxed);
    IDLE[pcpu].store(true, Ordering::Release);
    // After the flag is published: a vCPU queued before it would not have kicked us.
    let poll = {
        let sched = SchedLocked::lock(entry);
        if !sched.has_runnable() {
            Some(HaltPoll::Idle)
        } else if sched.behind_every_runnable(id, cpu::counter()) {
            Some(HaltPoll::AheadOfQueue)
        } else {
            None
        }
    };
    let poll = poll.filter(|_| {
        VcpuLocked::lock(entry, id).is_some_and(|v| !v.run.stopping && v.virqs.is_empty())
    });
    if poll == Some(HaltPoll::AheadOfQueue) {
        // Not idle: others' wake-ups must not end this poll (a kick that came meanwhile
        // already has, which only makes it shorter).
        IDLE[pcpu].store(false, Ordering::Release);
    }
    if let Some(poll) = poll {
        if poll == HaltPoll::Idle {
            // The VM's time up to the poll is its own; the poll is idle time, not work the VM
            // did: the bench reads the idle share as the room left on the pCPUs.
            charge_run_time(pcpu);
        }
        let start = cpu::counter();
        let until = start + cpu::counter_frequency() * HALT_POLL_US / 1_000_000;
        let mut now = start;
        while !kicked.load(Ordering::Acquire) && now < until {
            core::hint::spin_loop();
            now = cpu::counter();
        }
        if poll == HaltPoll::Idle {
            add_idle(pcpu, now.saturating_sub(start));
            crate::sampler::polled(pcpu, start, now);
            CHARGED_AT[pcpu].store(now, Ordering::Relaxed);
        }
    }
    IDLE[pcpu].store(false, Ordering::Release);
}

/// Continue, Preempt (or GiveWay) or Wait for the locked, running vCPU `id`: true if it keeps
/// this pCPU.
fn keep_running(vcpu: &mut VcpuLocked, id: VcpuId, frame: &TrapFrame, action: Action) -> bool {
    let (v, token) = vcpu.split();
    match action {
        Action::Preempt | Action::GiveWay => {
            let mut sched = SchedLocked::lock(token);
            if !sched.has_runnable() {
                // (A vCPU asked to give way finds the woken one picked elsewhere meanwhile.)
                refill_live(v);
                arm_timer(&sched, cpu::counter());
                return true;
            }
            save(v, frame);
            sched.preempt(id, cpu::counter());
            if matches!(action, Action::GiveWay) {
                ACCOUNTING.add(v.run.vm_id, Counter::GaveWay, 1);
            }
            false
        }
        Action::Wait => {
            v.vgic.save();
            if v.virqs.has_pending(&v.vgic.lrs) {
                refill_live(v);
                return true;
            }
            save(v, frame);
            let timer = &v.el1;
            let deadline = (timer.cntv_ctl & (TIMER_ENABLE | TIMER_IMASK) == TIMER_ENABLE)
                .then_some(timer.cntv_cval);
            // Under the vCPU's lock: an interrupt queued from now on finds it blocked and
            // wakes it.
            let mut sched = SchedLocked::lock(token);
            sched.block(id, deadline, cpu::counter());
            // A vLPI that arrived between the WFI trap and the vPE's exit rings no doorbell.
            if crate::gicv4::left_pending(id) {
                sched.wake(id);
            }
            false
        }
        _ => {
            refill_live(v);
            true
        }
    }
}

/// A device's interrupt (the SMMU's, or the passed-through function's INTx), taken while a guest
/// or the idle loop ran; ends or hands on the interrupt itself.
fn device_irq(entry: &mut Unlocked, raw: u32, pcpu: usize) {
    if let Some((id, vm_id)) = crate::gicv4::doorbell(raw) {
        // An LPI: no active state, the priority drop ends it.
        gic::drop_priority(raw);
        ACCOUNTING.add(vm_id, Counter::DeviceIrqs, 1);
        return wake_for_interrupt(&mut SchedLocked::lock(entry), id, pcpu);
    }
    let handled = with_hv(entry, |hv, token| {
        if hv.iommu.is_own_irq(raw) {
            hv.iommu.report_events();
            gic::end(raw);
            return true;
        }
        let is_intx = hv.passthrough.as_ref().and_then(|p| p.intx) == Some(raw);
        if is_intx {
            if let Some(p) = hv.passthrough.as_ref() {
                ACCOUNTING.add(p.owner_id, Counter::DeviceIrqs, 1);
            }
            // Priority drop only: the owner's EOI of the virtual interrupt deactivates it.
            gic::drop_priority(raw);
            hv.inject_passthrough_intx(token, raw, pcpu);
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
    let mut entry = Unlocked::entry();
    count_exit(pcpu, exit_kind(fault.esr));
    let vm_id = CURRENT_VM[pcpu].load(Ordering::Relaxed);
    let action = match esr::exception_class(fault.esr) {
        esr::EC_HVC64 => {
            ACCOUNTING.add(vm_id, Counter::Hypercalls, 1);
            hypercall(&mut entry, pcpu, frame)
        }
        esr::EC_SMC64 => {
            ACCOUNTING.add(vm_id, Counter::Hypercalls, 1);
            // SMC traps report the SMC itself as the return address; step over it.
            frame.elr += 4;
            hypercall(&mut entry, pcpu, frame)
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
            ACCOUNTING.add(vm_id, Counter::MmioExits, 1);
            let ipa = esr::fault_ipa(fault.hpfar, fault.far);
            let id = CURRENT[pcpu].load(Ordering::Relaxed);
            let data_abort = esr::exception_class(fault.esr) == esr::EC_DABT_LOWER;
            if let Some(offset) = ioreq::window_offset(ipa).filter(|_| data_abort) {
                let forwarded = with_hv(&mut entry, |hv, token| {
                    hv.forward_to_device_model(token, id, offset, fault.esr, frame, pcpu)
                });
                let action = match forwarded {
                    Ok(true) => Action::Descheduled,
                    Ok(false) => Action::Continue,
                    Err(why) => Action::StopVm(StopKind::Killed(format!(
                        "stage-2 fault at IPA {ipa:#x} ({}) at PC {:#x}: {why}",
                        Syndrome(fault.esr),
                        frame.elr
                    ))),
                };
                report_kill(&mut entry, pcpu, &action);
                return finish(&mut entry, pcpu, frame, action);
            }
            let emulated = with_hv(&mut entry, |hv, _| {
                // Field by field, so the VM can be read while the device model changes.
                let vm = hv.vcpu_vm.get(id).and_then(|&v| hv.vms.get(v)?.as_ref());
                let vm = vm.ok_or_else(|| String::from("the VM is gone"))?;
                if vm.balloon.gave_page_at(ipa) {
                    return Err(String::from(
                        "it touched a page it gave back to the balloon (BALLOON_RELEASE)",
                    ));
                }
                if vm.in_shared_code(ipa) {
                    return Err(String::from(
                        "it wrote to its code, which is read-only (one copy shared by every VM \
                         of its image)",
                    ));
                }
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
    report_kill(&mut entry, pcpu, &action);
    finish(&mut entry, pcpu, frame, action);
}

/// What a stop of `vm` becomes under the restart policy: a driver domain that crashed (killed
/// for a fault, or a panic or reset, which reach the hypervisor as SYSTEM_RESET) is restarted,
/// with a growing back-off, until it has crashed too often (`hypervisor::restart`); every other
/// stop stays what it is.
fn crash_policy(vm: &mut Vm, kind: StopKind) -> StopKind {
    if vm.kind != VmKind::DriverDomain || kind == StopKind::PowerOff {
        return kind;
    }
    let now_ms = cpu::counter() * 1000 / cpu::counter_frequency().max(1);
    let what = match &kind {
        StopKind::Killed(reason) => format!("crashed ({reason})"),
        _ => String::from("reset itself (PSCI SYSTEM_RESET: a reset or a panic)"),
    };
    match vm.crashes.crashed(now_ms) {
        Verdict::Restart { delay_ms, crash } => {
            warn!(
                "driver domain {} {what}; restarting it (crash {crash} within {} s{})",
                vm.name,
                restart::WINDOW_MS / 1000,
                if delay_ms > 0 {
                    format!(", after {delay_ms} ms")
                } else {
                    String::new()
                }
            );
            vm.start_delay_ms = delay_ms;
            vm.timeline = Some(Timeline::noticed(cpu::counter()));
            StopKind::Reset
        }
        Verdict::GiveUp { crashes } => {
            let why = format!(
                "driver domain {} {what}: {crashes} crashes within {} s, left stopped (its \
                 guests lose their network; fix the driver and boot again)",
                vm.name,
                restart::WINDOW_MS / 1000
            );
            error!("{why}");
            StopKind::Killed(why)
        }
    }
}

/// The kind of a synchronous exit with syndrome `esr`, for [`EL2_TIME`].
fn exit_kind(esr: u64) -> ExitKind {
    match esr::exception_class(esr) {
        esr::EC_HVC64 | esr::EC_SMC64 => ExitKind::Hypercall,
        esr::EC_WFX if !esr::is_wfe(esr) => ExitKind::Wait,
        esr::EC_DABT_LOWER | esr::EC_IABT_LOWER => ExitKind::Mmio,
        _ => ExitKind::Other,
    }
}

/// Logs why the VM running on this pCPU is being killed, if it is.
fn report_kill(entry: &mut Unlocked, pcpu: usize, action: &Action) {
    if let Action::StopVm(StopKind::Killed(reason)) = action {
        let id = CURRENT[pcpu].load(Ordering::Relaxed);
        let name = with_hv(entry, |hv, _| hv.name_of(id));
        error!("killing VM {name}: {reason}");
    }
}

/// Physical interrupt while a guest ran.
#[no_mangle]
extern "C" fn lower_irq(frame: &mut TrapFrame) {
    let pcpu = cpu::pcpu_index();
    count_exit(pcpu, ExitKind::Interrupt);
    let id = CURRENT[pcpu].load(Ordering::Relaxed);
    let mut entry = Unlocked::entry();
    let mut action = Action::Continue;
    while let Some(raw) = gic::acknowledge() {
        // Only 1020..=1023 are special: an LPI (a vPE's doorbell, INTID >= 8192) is
        // acknowledged, handled and ended like any other interrupt (stopping at it without an
        // EOI would leave this pCPU's running priority raised for good).
        if gic::is_special(raw) {
            break;
        }
        match raw {
            gic::HYP_TIMER_PPI => {
                cpu::stop_hyp_timer();
                sampler::from_guest(
                    pcpu,
                    CURRENT_VM[pcpu].load(Ordering::Relaxed),
                    frame.elr,
                    frame.spsr,
                );
                if sampler::deadline_passed(pcpu) {
                    action = Action::Preempt;
                } else {
                    // Only a sample was due: the slice goes on, the timer to its next target.
                    rearm_timer(&mut entry);
                }
            }
            gic::VTIMER_PPI => {
                // The guest's timer fired: mask it at the source (the guest unmasks it when it
                // reprograms the timer) and deliver it as a virtual interrupt.
                cpu::set_vtimer_ctl(cpu::vtimer_ctl() | TIMER_IMASK);
                let _ = inject_to(&mut entry, id, intid::VIRTUAL_TIMER, pcpu);
            }
            // The maintenance interrupt is level-triggered: its cause (an underflow, or a spent
            // EOI request in a list register) must be cleared before it is ended, or it would
            // be taken again at once. Refilling the list registers clears both.
            gic::MAINTENANCE_PPI => {
                if let Some(mut vcpu) = VcpuLocked::lock(&mut entry, id) {
                    refill_live(&mut vcpu);
                }
            }
            // A kick only brings the pCPU here; `finish` notices stop requests.
            gic::KICK_SGI => {}
            other => {
                device_irq(&mut entry, other, pcpu);
                continue;
            }
        }
        gic::end(raw);
    }
    finish(&mut entry, pcpu, frame, action);
}

#[no_mangle]
extern "C" fn lower_serror(frame: &mut TrapFrame) {
    let pcpu = cpu::pcpu_index();
    count_exit(pcpu, ExitKind::Other);
    finish(
        &mut Unlocked::entry(),
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
fn hypercall(entry: &mut Unlocked, pcpu: usize, frame: &mut TrapFrame) -> Action {
    let mut machine = TrapMachine {
        token: entry,
        pcpu,
        vcpu: CURRENT[pcpu].load(Ordering::Relaxed),
        vm_id: CURRENT_VM[pcpu].load(Ordering::Relaxed),
    };
    match dispatch::execute(&frame.x, &mut machine) {
        Outcome::Return { x0, x1, x2 } => {
            frame.x[0] = x0;
            if let Some(x1) = x1 {
                frame.x[1] = x1;
            }
            if let Some(x2) = x2 {
                frame.x[2] = x2;
            }
            Action::Continue
        }
        Outcome::Yield => {
            frame.x[0] = Status::Ok.as_u64();
            Action::Preempt
        }
        Outcome::VcpuOff => Action::VcpuOff,
        Outcome::SystemOff => {
            let name = with_hv(machine.token, |hv, _| hv.name_of(machine.vcpu));
            info!("VM {name} requested power off (PSCI SYSTEM_OFF)");
            Action::StopVm(StopKind::PowerOff)
        }
        Outcome::SystemReset => Action::StopVm(StopKind::Reset),
    }
}

/// The machine as the hypercall of vCPU `vcpu` (of VM `vm_id`, on `pcpu`) sees it. Each method
/// takes the locks it needs for itself alone, so the dispatcher's loops (GRANT_COPY's ops,
/// TEST_INJECT's SGIs) let other pCPUs in between steps; console writes take only that VM's
/// console lock.
struct TrapMachine<'t> {
    token: &'t mut Unlocked,
    pcpu: usize,
    vcpu: VcpuId,
    vm_id: u16,
}

impl dispatch::Machine for TrapMachine<'_> {
    fn console(&mut self, bytes: &[u8]) {
        vm_console_write(self.vm_id, bytes);
    }

    fn inject_sgi(&mut self, sgi: u32) -> Result<(), Status> {
        inject_to(self.token, self.vcpu, sgi, self.pcpu)
    }

    fn copy_batch_ok(&mut self, ops_gpa: u64, count: u64) -> bool {
        crate::sharing::copy_batch_ok(self.token, self.vm_id, ops_gpa, count)
    }

    fn copy_op(&mut self, op_gpa: u64) -> Status {
        // No HV lock: each VM's copy view alone, then the bytes with no lock (`sharing.rs`).
        crate::sharing::copy_op(self.token, self.vm_id, op_gpa)
    }

    fn sharing(&mut self, function: u64, x: &[u64; 31]) -> (Status, Option<u64>) {
        // The hot pair takes no HV lock (`locks.rs`); a send on a port bound to the hypervisor
        // falls through to collect the device model's answers.
        match function {
            hypercall::EVTCHN_SEND => {
                if let Some(status) = send_event(self.token, self.vm_id, x[1], self.pcpu) {
                    return (status, None);
                }
            }
            hypercall::EVTCHN_UNMASK => {
                return (unmask_event(self.token, self.vm_id, x[1], self.pcpu), None)
            }
            _ => {}
        }
        let mut locked = HvLocked::lock(self.token);
        let (hv, token) = locked.split();
        hv.sharing_call(token, self.vcpu, function, x, self.pcpu)
    }

    fn ioreq_set_irq(&mut self, guest: u64) -> Status {
        let mut locked = HvLocked::lock(self.token);
        let (hv, token) = locked.split();
        hv.set_emulated_irq(token, self.vm_id, guest, self.pcpu)
    }

    fn balloon(&mut self, function: u64, x1: u64, x2: u64) -> (Status, Option<u64>, Option<u64>) {
        let vcpu = self.vcpu;
        let mut scrub = Scrub::default();
        let mut fresh = Fresh::default();
        if function == hypercall::BALLOON_POPULATE {
            fresh = with_hv(self.token, |hv, _| hv.balloon_reserve(x2));
            // Up to a batch of zeroing, with no lock another VM needs.
            fresh.zero();
        }
        let answer = with_hv(self.token, |hv, token| {
            let answer = match hv.vcpu_vm.get(vcpu) {
                Some(&vm_index) => {
                    hv.balloon_call(token, vm_index, function, x1, x2, &mut scrub, &mut fresh)
                }
                None => (Status::InvalidArgument, None, None),
            };
            hv.balloon_unreserve(&mut fresh);
            answer
        });
        if !scrub.is_empty() {
            // Up to a batch (2 MiB) of zeroing, with no lock another VM needs.
            scrub.run();
            with_hv(self.token, |hv, _| hv.balloon_freed(&scrub));
        }
        answer
    }

    fn accounting_report(&mut self, tag: u64) -> Status {
        let frequency = cpu::counter_frequency();
        let now = cpu::counter();
        let min_gap = frequency * hypercall::ACCOUNTING_MIN_INTERVAL_MS / 1000;
        let Some(last) = LAST_REPORT.get(usize::from(self.vm_id)) else {
            return Status::InvalidArgument;
        };
        let previous = last.load(Ordering::Relaxed);
        if previous != 0 && now.saturating_sub(previous) < min_gap {
            return Status::Busy;
        }
        last.store(now, Ordering::Relaxed);
        // Names under the lock, printing without it.
        let vms: Vec<(VmId, String)> = with_hv(self.token, |hv, _| {
            hv.vms
                .iter()
                .flatten()
                .map(|vm| (vm.id, vm.name.clone()))
                .collect()
        });
        let frequency = cpu::counter_frequency();
        for (id, name) in vms {
            info!(
                "{}",
                accounting::vm_line(tag, &name, &ACCOUNTING.snapshot(id), frequency)
            );
        }
        info!(
            "{}",
            accounting::idle_line(
                tag,
                ACCOUNTING.idle_ticks(),
                frequency,
                PCPUS.load(Ordering::Relaxed)
            )
        );
        // Since boot, like the counters: the bench's boots report at a test's start and end.
        info!("{} (report {tag})", EL2_TIME.line(frequency));
        sampler::print_at_report(tag);
        Status::Ok
    }

    fn with_vcpus<R>(&mut self, f: impl FnOnce(&mut dyn VcpuControl) -> R) -> Option<R> {
        let mut locked = HvLocked::lock(self.token);
        let (hv, token) = locked.split();
        let vm_index = *hv.vcpu_vm.get(self.vcpu)?;
        hv.vms.get(vm_index)?.as_ref()?;
        let mut view = VmVcpus {
            hv,
            token,
            vm_index,
            pcpu: self.pcpu,
        };
        Some(f(&mut view))
    }

    fn with_msix<R>(&mut self, f: impl FnOnce(&mut dyn MsixControl) -> R) -> Option<R> {
        let mut locked = HvLocked::lock(self.token);
        let (hv, _) = locked.split();
        let vm_index = *hv.vcpu_vm.get(self.vcpu)?;
        hv.vms.get(vm_index)?.as_ref()?;
        Some(f(&mut crate::gicv4::VmMsix { hv, vm_index }))
    }
}

/// One VM's vCPUs for PSCI CPU_ON, under the HV lock (so a stop requested meanwhile cannot slip
/// in between the check and the start).
struct VmVcpus<'a> {
    hv: &'a mut Hv,
    token: &'a mut HvHeld,
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

    fn is_off(&mut self, index: usize) -> bool {
        self.vcpu_id(index)
            .is_some_and(|id| SchedLocked::lock(self.token).state(id) == RunState::Off)
    }

    fn start(&mut self, index: usize, entry: u64, context: u64) {
        let Some(id) = self.vcpu_id(index) else {
            return;
        };
        if let Some(mut vcpu) = VcpuLocked::lock(self.token, id) {
            let (v, vtoken) = vcpu.split();
            v.reset(entry, context);
            SchedLocked::lock(vtoken).wake(id);
        }
        kick_idle(self.pcpu);
    }
}
