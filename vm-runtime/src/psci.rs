//! PSCI over HVC (via the `smccc` crate): power the VM off or reset it, start and stop vCPUs.
//! The hypervisor emulates PSCI per VM, so SYSTEM_OFF/SYSTEM_RESET only affect this VM.

use crate::arch::hvc::Conduit as Hvc;

pub use smccc::psci::Error;

use crate::{console, cpu, gic};

/// Ends this VM (PSCI SYSTEM_OFF). Flushes any partial console line first.
pub fn system_off() -> ! {
    console::flush();
    let result = smccc::psci::system_off::<Hvc>();
    halt(format_args!("SYSTEM_OFF returned {result:?}"))
}

/// Restarts this VM (PSCI SYSTEM_RESET); the next boot sees `boot_count` + 1.
pub fn system_reset() -> ! {
    console::flush();
    let result = smccc::psci::system_reset::<Hvc>();
    halt(format_args!("SYSTEM_RESET returned {result:?}"))
}

/// PSCI CPU_ON: starts vCPU `target` (its MPIDR, i.e. Aff0 = vCPU index) at GPA `entry` at EL1h
/// with the MMU off and x0 = `context`. Most code wants [`crate::smp::cpu_on`] instead.
pub fn cpu_on(target: u64, entry: u64, context: u64) -> Result<(), Error> {
    smccc::psci::cpu_on::<Hvc>(target, entry, context)
}

/// PSCI CPU_OFF: stops the calling vCPU (the VM stops when its last vCPU is off).
pub fn cpu_off() -> ! {
    console::flush();
    let result = smccc::psci::cpu_off::<Hvc>();
    halt(format_args!("CPU_OFF returned {result:?}"))
}

/// What is left when a power-state call returns: report it once and sleep forever.
fn halt(why: core::fmt::Arguments) -> ! {
    crate::println!("psci: {why}; halting vCPU {}", cpu::index());
    console::flush();
    gic::disable_irqs();
    loop {
        cpu::wfi();
    }
}
