//! The arch layer: the place for asm, system-register access, raw pointers and MMIO.
//!
//! Everything above it (scheduler, VMs, hypercalls, device passthrough) is safe Rust over the
//! small interfaces here: devices and boot memory are claimed through `platform`, VM RAM is
//! owned by `mem::VmRam` and touched through `mem::GuestRam` views. No `unsafe` outside `arch`.

pub mod boot;
pub mod cpu;
// The ECAM accessor of the passed-through function (`passthrough.rs`); some of its helpers are
// only used by tests and diagnostics.
#[allow(dead_code)]
pub mod ecam;
pub mod gic;
pub mod heap;
pub mod its;
pub mod mem;
pub mod platform;
#[allow(dead_code)]
pub mod smmu;
pub mod uart;
pub mod vectors;

/// QEMU virt's GICv3 redistributor region fits 123 CPUs, but -smp above 8 buys nothing on a
/// 2-core host; the static per-pCPU arrays are sized for 8.
pub const MAX_PCPUS: usize = 8;
