//! The order of the hypervisor's locks, as types: the tokens that say which locks a pCPU holds
//! and which it may still take. The locks themselves, and the order written out, are the
//! binary's (`locks.rs`); the tokens are here so that the order is host-tested (the
//! `compile_fail` examples below are the orders that must not compile).
//!
//! Order: the HV lock, then **one** VM's event lock, then one vCPU's lock, then the scheduler's.
//! Beside the event lock, at the same place in the order: **one** VM's copy view (GRANT_COPY's
//! checks, `grant::copy::CopyView`), under which nothing at all is taken. Each guard takes a token of an earlier level (mutably borrowed while it lives) and hands out
//! the token of its own level, made by `taken` here.
//!
//! The order that compiles, each level under the one before:
//!
//! ```
//! use hypervisor::lock_order::*;
//! fn trap(entry: &mut Unlocked) {
//!     let mut hv = HvHeld::taken(entry);
//!     let mut events = EventsHeld::taken(&mut hv);
//!     let mut vcpu = VcpuHeld::taken(&mut events);
//!     fn sched(_: &mut impl MayLockSched) {}
//!     sched(&mut vcpu);
//!     // A send takes a VM's event lock with no HV lock, a tick a vCPU's alone.
//!     let _ = EventsHeld::taken(entry);
//!     let _ = VcpuHeld::taken(entry);
//!     // A copy takes one VM's copy view at a time with no HV lock; a change (balloon,
//!     // stop, GRANT_TABLE_SETUP) takes it under the HV lock.
//!     let _ = GrantsHeld::taken(entry);
//!     let _ = GrantsHeld::taken(&mut hv);
//! }
//! ```
//!
//! The HV lock under a VM's event lock:
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(events: &mut EventsHeld) {
//!     let _ = HvHeld::taken(events);
//! }
//! ```
//!
//! Two VMs' event locks at once (never needed: a send reads the sender's table, drops it, and
//! checks the target's under the target's lock alone):
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(events: &mut EventsHeld) {
//!     let _ = EventsHeld::taken(events);
//! }
//! ```
//!
//! A VM's event lock under a vCPU's:
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(vcpu: &mut VcpuHeld) {
//!     let _ = EventsHeld::taken(vcpu);
//! }
//! ```
//!
//! The HV lock under a VM's copy view (a copier holds pins while it takes the views one after
//! the other: a wait for pins holds the HV lock, so a copier must never wait for it):
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(view: &mut GrantsHeld) {
//!     let _ = HvHeld::taken(view);
//! }
//! ```
//!
//! Two VMs' copy views at once (the sides of an op are checked one VM at a time):
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(view: &mut GrantsHeld) {
//!     let _ = GrantsHeld::taken(view);
//! }
//! ```
//!
//! A VM's event lock, a vCPU's or the scheduler's under a copy view:
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(view: &mut GrantsHeld) {
//!     let _ = EventsHeld::taken(view);
//! }
//! ```
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(view: &mut GrantsHeld) {
//!     let _ = VcpuHeld::taken(view);
//! }
//! ```
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(view: &mut GrantsHeld) {
//!     fn sched(_: &mut impl MayLockSched) {}
//!     sched(view);
//! }
//! ```
//!
//! A copy view under a VM's event lock or a vCPU's:
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(events: &mut EventsHeld) {
//!     let _ = GrantsHeld::taken(events);
//! }
//! ```
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn f(vcpu: &mut VcpuHeld) {
//!     let _ = GrantsHeld::taken(vcpu);
//! }
//! ```
//!
//! A token does not leave its pCPU:
//!
//! ```compile_fail
//! use hypervisor::lock_order::*;
//! fn send_it(_: impl Send) {}
//! send_it(Unlocked::entry());
//! ```

use core::marker::PhantomData;

/// Not `Send`: a token stays on the pCPU that made it.
type Local = PhantomData<*mut ()>;

/// No lock held: any lock may be taken.
pub struct Unlocked(Local);
/// The HV lock is held: a VM's event lock or copy view, a vCPU's or the scheduler's may be
/// taken.
pub struct HvHeld(Local);
/// One VM's event lock is held: a vCPU's or the scheduler's may be taken (not another VM's).
pub struct EventsHeld(Local);
/// A vCPU's lock is held: only the scheduler's may be taken.
pub struct VcpuHeld(Local);
/// One VM's copy view is held: no lock may be taken (the heap's aside).
pub struct GrantsHeld(Local);

/// Tokens that allow taking the HV lock.
pub trait MayLockHv {}
/// Tokens that allow taking a VM's event lock.
pub trait MayLockEvents {}
/// Tokens that allow taking a vCPU's lock.
pub trait MayLockVcpu {}
/// Tokens that allow taking the scheduler's lock.
pub trait MayLockSched {}
/// Tokens that allow taking a VM's copy view.
pub trait MayLockGrants {}

impl MayLockHv for Unlocked {}
impl MayLockEvents for Unlocked {}
impl MayLockEvents for HvHeld {}
impl MayLockVcpu for Unlocked {}
impl MayLockVcpu for HvHeld {}
impl MayLockVcpu for EventsHeld {}
impl MayLockSched for Unlocked {}
impl MayLockSched for HvHeld {}
impl MayLockSched for EventsHeld {}
impl MayLockSched for VcpuHeld {}
impl MayLockGrants for Unlocked {}
impl MayLockGrants for HvHeld {}

impl Unlocked {
    /// The pCPU's token at a trap entry point or in the scheduler loop, where it holds no lock.
    pub fn entry() -> Unlocked {
        Unlocked(PhantomData)
    }
}

impl HvHeld {
    /// The token of the HV lock's guard, made once it holds the lock.
    pub fn taken(_order: &mut impl MayLockHv) -> HvHeld {
        HvHeld(PhantomData)
    }
}

impl EventsHeld {
    /// The token of a VM's event-lock guard, made once it holds the lock.
    pub fn taken(_order: &mut impl MayLockEvents) -> EventsHeld {
        EventsHeld(PhantomData)
    }
}

impl GrantsHeld {
    /// The token of a VM's copy-view guard, made once it holds the lock.
    pub fn taken(_order: &mut impl MayLockGrants) -> GrantsHeld {
        GrantsHeld(PhantomData)
    }
}

impl VcpuHeld {
    /// The token of a vCPU's guard, made once it holds the lock.
    pub fn taken(_order: &mut impl MayLockVcpu) -> VcpuHeld {
        VcpuHeld(PhantomData)
    }
}
