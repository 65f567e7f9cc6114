//! The arch layer: the only place with asm, system-register access, raw pointers and MMIO.
//!
//! Everything above it (scheduler, VMs, hypercalls) is safe Rust over the small interfaces here.

pub mod boot;
pub mod cpu;
// The SMMUv3 driver and the host ECAM accessor are built and their logic host-tested
// (`hypervisor::smmu`, `hypervisor::pci`), but boot does not use them yet: NIC passthrough
// (issue 4) wires them in.
#[allow(dead_code)]
pub mod ecam;
pub mod gic;
pub mod mem;
#[allow(dead_code)]
pub mod smmu;
pub mod uart;
pub mod vectors;

/// QEMU virt's GICv3 redistributor region fits 123 CPUs, but -smp above 8 buys nothing on a
/// 2-core host; the static per-pCPU arrays are sized for 8.
pub const MAX_PCPUS: usize = 8;
