//! The hypervisor's locks, and their order enforced by the compiler.
//!
//! Lock order (a lock may only be taken while holding locks before it, and never two of one
//! level):
//! 1. [`HvLocked`], the machine: the VM table, frames, VMIDs, the grant tables' records
//!    (mappings, lent refs, zombie RAM), connections, the SMMU and the passed-through function.
//!    Taken by hypercalls that share memory (but not GRANT_COPY, EVTCHN_SEND or
//!    EVTCHN_UNMASK), PSCI calls that start or stop vCPUs, stage-2 faults, device interrupts,
//!    and a VM's stop. Every *change* to event channels (setup, bind, close, a VM's death or
//!    restart) and to a VM's copy view is made holding it, so two changes never interleave.
//!    GRANT_MAP, GRANT_UNMAP, GRANT_TABLE_SETUP and GRANT_END stay under it: a map or unmap
//!    changes stage 2 (table frames from the machine-wide frame allocator) and the SMMU (one
//!    command queue), and one of them ties two VMs' records together (the mapper's mapping and
//!    the granter's lent count, or a dead granter's zombie count); they are connect-time calls
//!    (the data path maps its pools once), so the lock they share costs no throughput.
//! 2. One VM, either of two locks of that VM, **one VM's at a time** (their tokens cannot
//!    take another VM's lock of either kind, so no order between VMs is needed):
//!    - [`EventsLocked`], its event channels: its ports, its event page and the vCPU its
//!      events interrupt (`sharing::VmEvents`). Taken alone (from [`Unlocked`]) by
//!      EVTCHN_SEND and EVTCHN_UNMASK, and under the HV lock by the changes, which take each
//!      VM's for the moment they read or write that VM's table. A send reads the sender's
//!      table, drops it, then takes the target's and checks there that the target's port is
//!      still bound to the sender's (`hypervisor::evtchn::VmPorts::deliver_from`): a close or
//!      a death in between makes it `BadPort`, as if it came after. The pending bit is set in
//!      the target's event page holding the target's lock: a stop, a restart or a balloon
//!      release (all under the HV lock) forget or refuse that page under the same lock before
//!      its RAM changes hands (`arch::mem::GuestPage`), so a sender in flight writes only the
//!      page of a VM that still owns it.
//!    - [`ViewLocked`], its copy view (`hypervisor::grant::copy::CopyView`): its RAM extent,
//!      the pages it gave back to the balloon, its grant table's place, which is all a
//!      GRANT_COPY op's checks need of it. Nothing at all is taken under it (its token is
//!      [`GrantsHeld`], which allows no lock). Taken alone by GRANT_COPY (`sharing::copy_op`):
//!      the caller's (its op, read once; its status word), dropped, then each side's VM's in
//!      turn. Taken under the HV lock by the changes: a new incarnation opens it
//!      (`sharing::open_view`), a stop closes it first thing (`close_view`), a balloon
//!      release copies the balloon's record into it (`publish_given`), GRANT_TABLE_SETUP the
//!      table (`publish_table`). The `Vm` keeps the originals; the view is a snapshot that is
//!      only ever changed with both locks held, so a holder of either sees the same.
//! 3. [`VcpuLocked`], one vCPU: its saved context and its queue of pending virtual interrupts.
//!    Taken to switch it in or out, and to queue an interrupt for it (a send injects holding
//!    the target's event lock, so a stop that clears `deliver_to` is not overtaken).
//! 4. [`SchedLocked`], the scheduler: run queue, run states, deadlines.
//!
//! Then a VM's console lock, then the UART's (`logger`); the heap's lock is taken by any
//! allocation, under any of them, and takes none.
//!
//! Not a lock, but ordered with them: GRANT_COPY's copy pins (`hypervisor::grant::pins`).
//! - A pin on a VM is taken under that VM's copy view, by the check of the side in that VM,
//!   **before** the check reads the VM's memory; the bytes are copied, the status word is
//!   written and the pins are released with **no** lock held.
//! - A wait for a VM's pins (GRANT_END, a stop's teardown, a balloon release before its
//!   scrub) is made holding the HV lock and **no** copy view, after the change that makes new
//!   checks refuse. A copier takes views while it holds pins, never the HV lock, so it
//!   always gets to its copy and unpins: the wait is bounded by one page `memmove` per pCPU.
//! - Why each wait covers every copy that could still touch the RAM:
//!   - *A stop or restart* closes the VM's view under its lock, then waits. A check of a side
//!     in that VM either held the view before the close, and pinned there (the wait sees the
//!     pin: the pin happened before the view's release, which happened before the close), or
//!     after it, and found no RAM and no table (`InvalidArgument`/`BadRef`, as for a VM that
//!     is gone). The view opens again only on the next incarnation's RAM, after the reload, so
//!     no copy reaches the old RAM, and the caller's own vCPU cannot be mid-copy: a stop
//!     completes only once none of its vCPUs runs.
//!   - *A balloon release* marks the pages given (in `Vm::balloon`), copies the record into
//!     the view under its lock, then waits, then scrubs: the same argument, per page. Until
//!     the copy the frames are unmapped from stage 2 but still the VM's (in transit).
//!   - *GRANT_END* clears PERMIT in guest memory under the HV lock only. The check pins the
//!     granter before it reads the entry, and the pin, the entry's read, the clear and the
//!     wait's count are all sequentially consistent: either the wait sees the pin (and waits
//!     for the copy), or the read comes after the clear (`BadRef`). So a revoked grant is
//!     never written after GRANT_END returns.
//!
//! So a timer tick, a WFI, a context switch or an interrupt injection never waits for another
//! VM's grant copy: those need only a vCPU's lock and the scheduler's; an event sent between
//! two VMs waits only for those two VMs' event locks, and a GRANT_COPY op only for the copy
//! views of the VMs it names (each held for a few loads), never for the HV lock.
//!
//! Each lock is taken through a *token* of an earlier level, mutably borrowed for as long as the
//! guard lives, and the guard hands out the token of its own level. The scheduler's guard hands
//! out none, so nothing can be locked under it; code holding a vCPU has a [`VcpuHeld`], which
//! cannot take another vCPU, a VM's events or the HV lock; code holding a VM's events has an
//! [`EventsHeld`], which cannot take another VM's events or the HV lock; code holding a VM's
//! copy view has a [`GrantsHeld`], which can take nothing. A pCPU gets its one
//! [`Unlocked`] token at a trap entry point or in the scheduler loop. The tokens are the
//! library's (`hypervisor::lock_order`), where `compile_fail` examples check the orders that
//! must not compile.
//!
//! Console writes: nothing is printed holding the HV lock. The logger keeps the lines (and VM
//! console flushes) of a pCPU that holds it and prints them when [`HvLocked`] is dropped, after
//! the lock is released (`logger`): the UART is shared with every VM's console, and a stop or a
//! restart logs several lines.

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use alloc::boxed::Box;
use hypervisor::sched::{Scheduler, VcpuId};
use spin::mutex::{TicketMutex, TicketMutexGuard};
use spin::Once;

use hypervisor::grant::copy::CopyView;

use crate::machine::Hv;
use crate::sharing::VmEvents;
use crate::vm::Vcpu;

/// Fair (first come, first served): a pCPU that releases the HV lock between the steps of long
/// work, such as the ops of a GRANT_COPY batch, lets the waiting pCPUs in instead of winning it
/// back.
static HV: TicketMutex<Option<Hv>> = TicketMutex::new(None);
static VCPUS: Once<Box<[TicketMutex<Vcpu>]>> = Once::new();
static SCHED: TicketMutex<Option<Scheduler>> = TicketMutex::new(None);
/// Each VM's event channels, by VM index (`hypervisor::grant::vm_index`). Made on first use,
/// which is the boot's connection setup, before any vCPU runs.
static EVENTS: Once<Box<[TicketMutex<VmEvents>]>> = Once::new();
/// Each VM's copy view (what GRANT_COPY's checks need of it), by VM index. Made on first use,
/// at boot, before any vCPU runs.
static VIEWS: Once<Box<[TicketMutex<CopyView>]>> = Once::new();

pub use hypervisor::lock_order::{
    EventsHeld, GrantsHeld, HvHeld, MayLockEvents, MayLockGrants, MayLockHv, MayLockSched,
    MayLockVcpu, Unlocked, VcpuHeld,
};

/// Installs the state behind the locks. Called once by the primary before any vCPU runs.
pub fn install(hv: Hv, vcpus: alloc::vec::Vec<Vcpu>, sched: Scheduler) {
    *HV.lock() = Some(hv);
    VCPUS.call_once(|| vcpus.into_iter().map(TicketMutex::new).collect());
    *SCHED.lock() = Some(sched);
}

/// The HV lock held. Dropping it prints what the logger kept meanwhile (see `logger`).
pub struct HvLocked<'t> {
    /// `None` only inside `drop`, which releases the lock before printing.
    guard: Option<TicketMutexGuard<'static, Option<Hv>>>,
    token: HvHeld,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> HvLocked<'t> {
    pub fn lock(order: &'t mut impl MayLockHv) -> Self {
        let guard = HV.lock();
        crate::logger::hv_lock_taken();
        HvLocked {
            guard: Some(guard),
            token: HvHeld::taken(order),
            _order: PhantomData,
        }
    }

    /// The state and the token for the locks after this one.
    pub fn split(&mut self) -> (&mut Hv, &mut HvHeld) {
        let hv = self
            .guard
            .as_mut()
            .and_then(|guard| guard.as_mut())
            .expect("the hypervisor state is installed at boot");
        (hv, &mut self.token)
    }
}

impl Drop for HvLocked<'_> {
    fn drop(&mut self) {
        let turn = crate::logger::hv_lock_releasing();
        drop(self.guard.take());
        crate::logger::hv_lock_dropped(turn);
    }
}

impl Deref for HvLocked<'_> {
    type Target = Hv;
    fn deref(&self) -> &Hv {
        self.guard
            .as_ref()
            .and_then(|guard| guard.as_ref())
            .expect("the hypervisor state is installed at boot")
    }
}

impl DerefMut for HvLocked<'_> {
    fn deref_mut(&mut self) -> &mut Hv {
        self.split().0
    }
}

/// One VM's event lock held.
pub struct EventsLocked<'t> {
    guard: TicketMutexGuard<'static, VmEvents>,
    token: EventsHeld,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> EventsLocked<'t> {
    /// VM `vm`'s event lock; `None` for an id that names no VM.
    pub fn lock(order: &'t mut impl MayLockEvents, vm: hypervisor::grant::VmId) -> Option<Self> {
        Self::lock_index(order, hypervisor::grant::vm_index(vm)?)
    }

    /// The event lock of the VM at `index` (`0..MAX_VMS`); `None` beyond.
    pub fn lock_index(order: &'t mut impl MayLockEvents, index: usize) -> Option<Self> {
        let slots = EVENTS.call_once(|| {
            (0..shared_abi::layout::MAX_VMS)
                .map(|_| TicketMutex::new(VmEvents::default()))
                .collect()
        });
        Some(EventsLocked {
            guard: slots.get(index)?.lock(),
            token: EventsHeld::taken(order),
            _order: PhantomData,
        })
    }

    /// The VM's events and the token for the locks after this one.
    pub fn split(&mut self) -> (&mut VmEvents, &mut EventsHeld) {
        (&mut self.guard, &mut self.token)
    }
}

impl Deref for EventsLocked<'_> {
    type Target = VmEvents;
    fn deref(&self) -> &VmEvents {
        &self.guard
    }
}

impl DerefMut for EventsLocked<'_> {
    fn deref_mut(&mut self) -> &mut VmEvents {
        &mut self.guard
    }
}

/// One VM's copy view held. Nothing can be locked under it: its token is never handed out.
pub struct ViewLocked<'t> {
    guard: TicketMutexGuard<'static, CopyView>,
    _token: GrantsHeld,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> ViewLocked<'t> {
    /// VM `vm`'s copy view; `None` for an id that names no VM.
    pub fn lock(order: &'t mut impl MayLockGrants, vm: hypervisor::grant::VmId) -> Option<Self> {
        let slots = VIEWS.call_once(|| {
            (0..shared_abi::layout::MAX_VMS)
                .map(|_| TicketMutex::new(CopyView::default()))
                .collect()
        });
        Some(ViewLocked {
            guard: slots.get(hypervisor::grant::vm_index(vm)?)?.lock(),
            _token: GrantsHeld::taken(order),
            _order: PhantomData,
        })
    }
}

impl Deref for ViewLocked<'_> {
    type Target = CopyView;
    fn deref(&self) -> &CopyView {
        &self.guard
    }
}

impl DerefMut for ViewLocked<'_> {
    fn deref_mut(&mut self) -> &mut CopyView {
        &mut self.guard
    }
}

/// One vCPU's lock held.
pub struct VcpuLocked<'t> {
    guard: TicketMutexGuard<'static, Vcpu>,
    token: VcpuHeld,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> VcpuLocked<'t> {
    /// vCPU `id`'s lock; `None` for an id that names no vCPU.
    pub fn lock(order: &'t mut impl MayLockVcpu, id: VcpuId) -> Option<Self> {
        let vcpu = VCPUS.get()?.get(id)?;
        Some(VcpuLocked {
            guard: vcpu.lock(),
            token: VcpuHeld::taken(order),
            _order: PhantomData,
        })
    }

    /// The vCPU and the token for the scheduler's lock.
    pub fn split(&mut self) -> (&mut Vcpu, &mut VcpuHeld) {
        (&mut self.guard, &mut self.token)
    }

    pub fn token(&mut self) -> &mut VcpuHeld {
        &mut self.token
    }
}

impl Deref for VcpuLocked<'_> {
    type Target = Vcpu;
    fn deref(&self) -> &Vcpu {
        &self.guard
    }
}

impl DerefMut for VcpuLocked<'_> {
    fn deref_mut(&mut self) -> &mut Vcpu {
        &mut self.guard
    }
}

/// The scheduler's lock held.
pub struct SchedLocked<'t> {
    guard: TicketMutexGuard<'static, Option<Scheduler>>,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> SchedLocked<'t> {
    pub fn lock(_order: &'t mut impl MayLockSched) -> Self {
        SchedLocked {
            guard: SCHED.lock(),
            _order: PhantomData,
        }
    }
}

impl Deref for SchedLocked<'_> {
    type Target = Scheduler;
    fn deref(&self) -> &Scheduler {
        self.guard
            .as_ref()
            .expect("the scheduler is installed at boot")
    }
}

impl DerefMut for SchedLocked<'_> {
    fn deref_mut(&mut self) -> &mut Scheduler {
        self.guard
            .as_mut()
            .expect("the scheduler is installed at boot")
    }
}
