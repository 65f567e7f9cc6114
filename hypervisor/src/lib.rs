//! sluice hypervisor library: the hardware-independent logic of the EL2 hypervisor.
//!
//! Everything here is safe Rust and is unit-tested on the host (`cargo test -p hypervisor --lib`).
//! The binary (`main.rs`) adds the arch layer: boot, exception vectors, register access, MMIO.
#![cfg_attr(not(test), no_std)]
// The trusted base is kept small: unsafe code lives only in the arch/driver modules of the
// binaries and in vm-runtime, never in this library.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod accounting;
pub mod balloon;
pub mod console;
pub mod dispatch;
pub mod esr;
pub mod evtchn;
pub mod grant;
pub mod ioreq;
pub mod irqmap;
pub mod its;
pub mod lock_order;
pub mod mm;
pub mod pci;
pub mod profile;
pub mod restart;
pub mod sched;
pub mod smmu;
pub mod vgic;
