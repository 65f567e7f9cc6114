//! vm-runtime: everything a sluice VM image (guest or driver domain) shares. It owns the machine
//! from the first instruction: boot stub, EL1 MMU and vectors, heap, console and logging, panic
//! handler, GIC CPU interface and IRQ dispatch, virtual timer, PSCI and secondary vCPUs, and the
//! hypercall wrappers. An application supplies `main` through [`entry!`] and links with
//! `vm.ld` (see its build.rs).
//!
//! The VM contract it relies on: the flat image is loaded at GPA 0x4000_0000 and entered at its
//! first byte at EL1h with the MMU off and x0 = GPA of the start-info page (the last page of RAM);
//! only RAM is mapped; the GIC is the ICC_*_EL1 CPU interface; the console is a hypercall.
//!
//! Unsafe code is confined to `boot`, `vectors`, `cpu`, `gic`, `hypercall`, `heap`, the shared-memory
//! views of `shared`, and the one foreign-page view in `grant`.
#![no_std]

extern crate alloc;

mod boot;
pub mod console;
pub mod control;
pub mod cpu;
pub mod evtchn;
pub mod gic;
pub mod grant;
pub mod heap;
pub mod hypercall;
pub mod irq;
pub mod page;
mod panic;
pub mod psci;
pub mod report;
mod rt;
pub mod shared;
pub mod smp;
pub mod timer;
mod vectors;

use core::fmt;

pub use rt::start_info;
pub use shared_abi;
pub use shared_abi::bundle::VmKind;
pub use shared_abi::start_info::{setting, setting_u64, StartInfo};
pub use smp::cpu_on;

/// A setting that is present but not a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSetting<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl fmt::Display for BadSetting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setting {}={} is not a number (decimal or 0x hex)",
            self.key, self.value
        )
    }
}

/// The numeric setting `key`, `default` if it is absent, an error if it is malformed.
pub fn setting_u64_or<'a>(
    settings: &'a str,
    key: &'a str,
    default: u64,
) -> Result<u64, BadSetting<'a>> {
    match setting(settings, key) {
        None => Ok(default),
        Some(value) => setting_u64(settings, key).ok_or(BadSetting { key, value }),
    }
}

/// Declares the VM's main function: `vm_runtime::entry!(main);` where `main` is
/// `fn(&StartInfo<'static>) -> !` or `fn(&StartInfo<'static>)`; in the second case the VM powers
/// off (PSCI SYSTEM_OFF) when it returns. `main` runs on vCPU 0 with the heap, console, logging
/// and IRQs ready.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(export_name = "__sluice_vm_main")]
        #[allow(unreachable_code)]
        fn __sluice_vm_main(info: &'static $crate::StartInfo<'static>) -> ! {
            $main(info);
            $crate::psci::system_off()
        }
    };
}
