//! The hypervisor's locks, and their order enforced by the compiler.
//!
//! Lock order (a lock may only be taken while holding locks before it, and never two of one
//! level):
//! 1. [`HvLocked`], the machine: the VM table, frames, VMIDs, grant and event-channel tables,
//!    connections, the SMMU and the passed-through function. Taken by hypercalls that share
//!    memory, PSCI calls that start or stop vCPUs, stage-2 faults, device interrupts, and a VM's
//!    stop.
//! 2. [`VcpuLocked`], one vCPU: its saved context and its queue of pending virtual interrupts.
//!    Taken to switch it in or out, and to queue an interrupt for it.
//! 3. [`SchedLocked`], the scheduler: run queue, run states, deadlines.
//!
//! Then a VM's console lock, then the UART's (`logger`); the heap's lock is taken by any
//! allocation, under any of them, and takes none.
//!
//! Not a lock, but ordered with them: GRANT_COPY's copy pins (`hypervisor::grant::pins`). A pin
//! is taken only under the HV lock; the copy and the pin's release run with **no** lock held;
//! a wait for a VM's pins (GRANT_END, a VM's teardown, a balloon release) is made holding the
//! HV lock, so no new pin can start while it waits and it cannot deadlock with a copier, which
//! takes no lock before it unpins.
//!
//! So a timer tick, a WFI, a context switch or an interrupt injection never waits for another
//! VM's grant copy: those need only a vCPU's lock and the scheduler's.
//!
//! Each lock is taken through a *token* of an earlier level, mutably borrowed for as long as the
//! guard lives, and the guard hands out the token of its own level. The scheduler's guard hands
//! out none, so nothing can be locked under it; code holding a vCPU has a [`VcpuHeld`], which
//! cannot take another vCPU or the HV lock. A pCPU gets its one [`Unlocked`] token at a trap
//! entry point or in the scheduler loop.

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use alloc::boxed::Box;
use hypervisor::sched::{Scheduler, VcpuId};
use spin::mutex::{TicketMutex, TicketMutexGuard};
use spin::Once;

use crate::machine::Hv;
use crate::vm::Vcpu;

/// Fair (first come, first served): a pCPU that releases the HV lock between the steps of long
/// work, such as the ops of a GRANT_COPY batch, lets the waiting pCPUs in instead of winning it
/// back.
static HV: TicketMutex<Option<Hv>> = TicketMutex::new(None);
static VCPUS: Once<Box<[TicketMutex<Vcpu>]>> = Once::new();
static SCHED: TicketMutex<Option<Scheduler>> = TicketMutex::new(None);

/// Not `Send`: a token stays on the pCPU that made it.
type Local = PhantomData<*mut ()>;

/// No lock held: any lock may be taken.
pub struct Unlocked(Local);
/// The HV lock is held: a vCPU's or the scheduler's may be taken.
pub struct HvHeld(Local);
/// A vCPU's lock is held: only the scheduler's may be taken.
pub struct VcpuHeld(Local);

/// Tokens that allow taking the HV lock.
pub trait MayLockHv {}
/// Tokens that allow taking a vCPU's lock.
pub trait MayLockVcpu {}
/// Tokens that allow taking the scheduler's lock.
pub trait MayLockSched {}

impl MayLockHv for Unlocked {}
impl MayLockVcpu for Unlocked {}
impl MayLockVcpu for HvHeld {}
impl MayLockSched for Unlocked {}
impl MayLockSched for HvHeld {}
impl MayLockSched for VcpuHeld {}

impl Unlocked {
    /// The pCPU's token at a trap entry point or in the scheduler loop, where it holds no lock.
    pub fn entry() -> Unlocked {
        Unlocked(PhantomData)
    }
}

/// Installs the state behind the locks. Called once by the primary before any vCPU runs.
pub fn install(hv: Hv, vcpus: alloc::vec::Vec<Vcpu>, sched: Scheduler) {
    *HV.lock() = Some(hv);
    VCPUS.call_once(|| vcpus.into_iter().map(TicketMutex::new).collect());
    *SCHED.lock() = Some(sched);
}

/// The HV lock held.
pub struct HvLocked<'t> {
    guard: TicketMutexGuard<'static, Option<Hv>>,
    token: HvHeld,
    _order: PhantomData<&'t mut ()>,
}

impl<'t> HvLocked<'t> {
    pub fn lock(_order: &'t mut impl MayLockHv) -> Self {
        HvLocked {
            guard: HV.lock(),
            token: HvHeld(PhantomData),
            _order: PhantomData,
        }
    }

    /// The state and the token for the locks after this one.
    pub fn split(&mut self) -> (&mut Hv, &mut HvHeld) {
        let hv = self
            .guard
            .as_mut()
            .expect("the hypervisor state is installed at boot");
        (hv, &mut self.token)
    }
}

impl Deref for HvLocked<'_> {
    type Target = Hv;
    fn deref(&self) -> &Hv {
        self.guard
            .as_ref()
            .expect("the hypervisor state is installed at boot")
    }
}

impl DerefMut for HvLocked<'_> {
    fn deref_mut(&mut self) -> &mut Hv {
        self.split().0
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
    pub fn lock(_order: &'t mut impl MayLockVcpu, id: VcpuId) -> Option<Self> {
        let vcpu = VCPUS.get()?.get(id)?;
        Some(VcpuLocked {
            guard: vcpu.lock(),
            token: VcpuHeld(PhantomData),
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
