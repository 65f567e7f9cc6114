//! The GICv3 CPU interface (ICC_*_EL1 system registers, which the hypervisor routes to the
//! virtual CPU interface; driven through `arm-gic`'s `GicCpuInterface`) and IRQ masking in
//! PSTATE.DAIF (through `aarch64-cpu`). VMs see no distributor or redistributor: these
//! registers are the whole interrupt controller.

use core::sync::atomic::{compiler_fence, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{ReadWriteable, Readable, DAIF};
use arm_gic::gicv3::GicCpuInterface;
use arm_gic::{IntId, InterruptGroup};

/// INTIDs 1020..=1023 are special; 1023 means "nothing pending" (spurious).
pub const SPURIOUS: u32 = 1023;

/// Sets up this vCPU's CPU interface: every priority passes (ICC_PMR_EL1 = 0xff) and group 1
/// interrupts are enabled (ICC_IGRPEN1_EL1 = 1). EOI mode stays 0 (EOIR drops priority and
/// deactivates). Called by the runtime on every vCPU before it unmasks IRQs.
pub fn init_cpu() {
    GicCpuInterface::set_priority_mask(0xff);
    GicCpuInterface::enable_group1(true);
    barrier::isb(barrier::SY);
}

/// Acknowledges the highest-priority pending group 1 interrupt; `None` if none is pending
/// (ICC_IAR1_EL1 read [`SPURIOUS`]).
pub(crate) fn acknowledge() -> Option<IntId> {
    GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)
}

/// Ends an interrupt returned by [`acknowledge`] (priority drop and deactivation, EOI mode 0).
pub(crate) fn end_of_interrupt(intid: IntId) {
    GicCpuInterface::end_interrupt(intid, InterruptGroup::Group1);
    barrier::isb(barrier::SY);
}

/// Unmasks IRQs on this vCPU (clears PSTATE.I).
pub fn enable_irqs() {
    // The register access is `nomem`: the fence keeps the critical section's memory accesses
    // before the unmask.
    compiler_fence(Ordering::SeqCst);
    DAIF.modify(DAIF::I::Unmasked);
}

/// Masks IRQs on this vCPU (sets PSTATE.I).
pub fn disable_irqs() {
    DAIF.modify(DAIF::I::Masked);
    // As above: the critical section's accesses stay after the mask.
    compiler_fence(Ordering::SeqCst);
}

/// Whether IRQs are currently unmasked on this vCPU.
pub fn irqs_enabled() -> bool {
    !DAIF.is_set(DAIF::I)
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
