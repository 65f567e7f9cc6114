//! The order of the hypervisor's locks, as types: the tokens that say which locks a pCPU holds
//! and which it may still take. The locks themselves, and the order written out, are the
//! binary's (`locks.rs`); the tokens are here so that the order is host-tested (the
//! `compile_fail` examples below are the orders that must not compile).
//!
//! Order: the HV lock, then **one** VM's event lock, then one vCPU's lock, then the scheduler's.
//! Each guard takes a token of an earlier level (mutably borrowed while it lives) and hands out
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
/// The HV lock is held: a VM's event lock, a vCPU's or the scheduler's may be taken.
pub struct HvHeld(Local);
/// One VM's event lock is held: a vCPU's or the scheduler's may be taken (not another VM's).
pub struct EventsHeld(Local);
/// A vCPU's lock is held: only the scheduler's may be taken.
pub struct VcpuHeld(Local);

/// Tokens that allow taking the HV lock.
pub trait MayLockHv {}
/// Tokens that allow taking a VM's event lock.
pub trait MayLockEvents {}
/// Tokens that allow taking a vCPU's lock.
pub trait MayLockVcpu {}
/// Tokens that allow taking the scheduler's lock.
pub trait MayLockSched {}

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

impl VcpuHeld {
    /// The token of a vCPU's guard, made once it holds the lock.
    pub fn taken(_order: &mut impl MayLockVcpu) -> VcpuHeld {
        VcpuHeld(PhantomData)
    }
}
