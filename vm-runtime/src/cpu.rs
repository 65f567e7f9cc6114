//! CPU primitives outside any device: which vCPU this is, WFI, barriers, and the system registers
//! of the EL1 virtual timer and the exception syndrome, all through `aarch64-cpu`'s typed
//! registers and instructions.

use core::sync::atomic::{compiler_fence, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0, ELR_EL1, ESR_EL1,
    FAR_EL1, MPIDR_EL1,
};

/// This vCPU's index (MPIDR_EL1.Aff0; the hypervisor numbers a VM's vCPUs 0, 1, ...).
pub fn index() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// Waits for an interrupt. Traps to the hypervisor, which runs something else until this vCPU's
/// virtual timer expires or a virtual interrupt is pending for it (whether or not PSTATE.I masks
/// it, as on hardware).
pub fn wfi() {
    // aarch64-cpu's WFI is `nomem`: the fences keep memory accesses (flags an IRQ handler sets)
    // on their side of the wait.
    compiler_fence(Ordering::SeqCst);
    aarch64_cpu::asm::wfi();
    compiler_fence(Ordering::SeqCst);
}

/// Instruction synchronization barrier.
pub fn isb() {
    barrier::isb(barrier::SY);
}

/// The virtual counter (CNTVCT_EL0), read after an ISB so it is not sampled early.
pub(crate) fn cntvct() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// The counter frequency in Hz (CNTFRQ_EL0).
pub(crate) fn cntfrq() -> u64 {
    CNTFRQ_EL0.get()
}

/// Programs the EL1 virtual timer: compare value, then control (bit 0 ENABLE, bit 1 IMASK).
pub(crate) fn set_vtimer(cval: u64, ctl: u64) {
    CNTV_CVAL_EL0.set(cval);
    CNTV_CTL_EL0.set(ctl);
    barrier::isb(barrier::SY);
}

/// Writes CNTV_CTL_EL0 only.
pub(crate) fn set_vtimer_ctl(ctl: u64) {
    CNTV_CTL_EL0.set(ctl);
    barrier::isb(barrier::SY);
}

/// ESR_EL1, FAR_EL1 and ELR_EL1: what the last synchronous exception was, where it happened.
pub(crate) fn fault_registers() -> (u64, u64, u64) {
    (ESR_EL1.get(), FAR_EL1.get(), ELR_EL1.get())
}
