//! CPU primitives outside any device: which vCPU this is, WFI, barriers, and the system registers
//! of the EL1 virtual timer and the exception syndrome. Each is one instruction of inline asm.

use core::arch::asm;

/// This vCPU's index (MPIDR_EL1.Aff0; the hypervisor numbers a VM's vCPUs 0, 1, ...).
pub fn index() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    (mpidr & 0xff) as usize
}

/// Waits for an interrupt. Traps to the hypervisor, which runs something else until this vCPU's
/// virtual timer expires or a virtual interrupt is pending for it (whether or not PSTATE.I masks
/// it, as on hardware).
pub fn wfi() {
    // SAFETY: WFI only suspends execution; no `nomem` so the compiler does not move memory
    // accesses across it.
    unsafe { asm!("wfi", options(nostack, preserves_flags)) };
}

/// Instruction synchronization barrier.
pub fn isb() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// The virtual counter (CNTVCT_EL0), read after an ISB so it is not sampled early.
pub(crate) fn cntvct() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// The counter frequency in Hz (CNTFRQ_EL0).
pub(crate) fn cntfrq() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Programs the EL1 virtual timer: compare value, then control (bit 0 ENABLE, bit 1 IMASK).
pub(crate) fn set_vtimer(cval: u64, ctl: u64) {
    // SAFETY: the virtual timer belongs to this vCPU; it only raises PPI 27.
    unsafe {
        asm!(
            "msr cntv_cval_el0, {cval}",
            "msr cntv_ctl_el0, {ctl}",
            "isb",
            cval = in(reg) cval,
            ctl = in(reg) ctl,
            options(nostack, preserves_flags),
        )
    };
}

/// Writes CNTV_CTL_EL0 only.
pub(crate) fn set_vtimer_ctl(ctl: u64) {
    // SAFETY: as in `set_vtimer`.
    unsafe { asm!("msr cntv_ctl_el0, {}", "isb", in(reg) ctl, options(nostack, preserves_flags)) };
}

/// ESR_EL1, FAR_EL1 and ELR_EL1: what the last synchronous exception was, where it happened.
pub(crate) fn fault_registers() -> (u64, u64, u64) {
    let (esr, far, elr): (u64, u64, u64);
    // SAFETY: reading these registers has no side effects.
    unsafe {
        asm!(
            "mrs {esr}, esr_el1",
            "mrs {far}, far_el1",
            "mrs {elr}, elr_el1",
            esr = out(reg) esr,
            far = out(reg) far,
            elr = out(reg) elr,
            options(nomem, nostack, preserves_flags),
        )
    };
    (esr, far, elr)
}
