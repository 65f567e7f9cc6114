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
//! The trusted base: the crate denies `unsafe_code`, and only two modules are allowed it:
//! `arch` (boot stub, vectors, the hypercall instruction, the heap's raw RAM, the app's entry
//! symbol, the isolation probes, the emulated NIC's register accesses) and `shared` (memory a peer writes too: rings, buffer pools,
//! granted pages, control pages). Every other module is safe Rust over those and over typed
//! register crates (`aarch64-cpu` for system registers, `arm-gic` for the GIC CPU interface).
// Host builds (`cargo test -p vm-runtime --lib`) test the pure parts; the machine-level parts
// compile there but are only ever run in a VM.
#![cfg_attr(not(test), no_std)]
// On the host the boot path (assembly, aarch64 only) is left out, so what it calls looks unused.
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod arch;
pub mod balloon;
pub mod console;
pub mod control;
pub mod cpu;
pub mod evtchn;
pub mod gic;
pub mod grant;
pub mod hypercall;
pub mod irq;
pub mod page;
// Only a VM image needs a panic handler; a host build has std's.
#[cfg(target_os = "none")]
mod panic;
pub mod psci;
pub mod report;
mod rt;
#[allow(unsafe_code)]
pub mod shared;
pub mod smp;
pub mod timer;

pub use arch::{heap, mmio, probe};
pub use rt::start_info;
pub use shared_abi;
pub use shared_abi::bundle::VmKind;
pub use shared_abi::start_info::{setting, setting_bool, setting_u64, StartInfo};
pub use smp::cpu_on;

/// A setting that is present but not a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting {key}={value} is not a number (decimal or 0x hex)")]
pub struct BadSetting<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// A setting that is present but not `true` or `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting {key}={value} is not true/false")]
pub struct NotAFlag<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// The flag setting `key`, `default` if it is absent, an error if it is neither `true` nor
/// `false`.
pub fn setting_bool_or<'a>(
    settings: &'a str,
    key: &'a str,
    default: bool,
) -> Result<bool, NotAFlag<'a>> {
    match setting(settings, key) {
        None => Ok(default),
        Some(value) => setting_bool(settings, key).ok_or(NotAFlag { key, value }),
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
