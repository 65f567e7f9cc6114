//! The arch layer: the only place with asm, system-register access, raw pointers and MMIO.
//!
//! Everything above it (scheduler, VMs, hypercalls) is safe Rust over the small interfaces here.

pub mod boot;
pub mod cpu;
pub mod gic;
pub mod mem;
pub mod uart;
pub mod vectors;

/// QEMU virt's GICv3 redistributor region fits 123 CPUs, but -smp above 8 buys nothing on a
/// 2-core host; the static per-pCPU arrays are sized for 8.
pub const MAX_PCPUS: usize = 8;
