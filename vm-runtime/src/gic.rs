//! The GICv3 CPU interface (ICC_*_EL1 system registers, which the hypervisor routes to the
//! virtual CPU interface) and IRQ masking in PSTATE.DAIF. VMs see no distributor or
//! redistributor: these registers are the whole interrupt controller.

use core::arch::asm;

/// INTIDs 1020..=1023 are special; 1023 means "nothing pending" (spurious).
pub const SPURIOUS: u32 = 1023;

/// Sets up this vCPU's CPU interface: every priority passes (ICC_PMR_EL1 = 0xff) and group 1
/// interrupts are enabled (ICC_IGRPEN1_EL1 = 1). EOI mode stays 0 (EOIR drops priority and
/// deactivates). Called by the runtime on every vCPU before it unmasks IRQs.
pub fn init_cpu() {
    // SAFETY: writes to this vCPU's own (virtual) CPU interface; they only change which virtual
    // interrupts are signalled to it.
    unsafe {
        asm!(
            "msr icc_pmr_el1, {pmr}",
            "msr icc_igrpen1_el1, {en}",
            "isb",
            pmr = in(reg) 0xffu64,
            en = in(reg) 1u64,
            options(nostack, preserves_flags),
        )
    };
}

/// Acknowledges the highest-priority pending group 1 interrupt; returns the raw ICC_IAR1_EL1
/// value (INTID in bits 0..24), [`SPURIOUS`] if none is pending.
pub(crate) fn acknowledge() -> u32 {
    let iar: u64;
    // SAFETY: reading IAR1 acknowledges an interrupt; the caller ends it with `end_of_interrupt`.
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nostack, preserves_flags)) };
    (iar & 0x00ff_ffff) as u32
}

/// Ends an interrupt returned by [`acknowledge`] (priority drop and deactivation, EOI mode 0).
pub(crate) fn end_of_interrupt(intid: u32) {
    // SAFETY: writes the INTID we acknowledged back to EOIR1.
    unsafe {
        asm!("msr icc_eoir1_el1, {}", "isb", in(reg) u64::from(intid), options(nostack, preserves_flags))
    };
}

/// Unmasks IRQs on this vCPU (clears PSTATE.I).
pub fn enable_irqs() {
    // SAFETY: the vectors are installed before any Rust code runs. Not `nomem`: this is a
    // compiler barrier, so memory accesses stay on their side of it.
    unsafe { asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Masks IRQs on this vCPU (sets PSTATE.I).
pub fn disable_irqs() {
    // SAFETY: masking interrupts cannot break memory safety; compiler barrier as above.
    unsafe { asm!("msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Whether IRQs are currently unmasked on this vCPU.
pub fn irqs_enabled() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) == 0
}

/// Runs `f` with IRQs masked, then restores the previous mask state. Use it around anything an
/// IRQ handler on this vCPU might also take (spin locks).
pub fn without_irqs<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = irqs_enabled();
    disable_irqs();
    let result = f();
    if was_enabled {
        enable_irqs();
    }
    result
}
