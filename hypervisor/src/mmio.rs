//! MMIO emulation: a stage-2 fault on an address that an emulated device owns is completed here
//! instead of killing the VM. The only emulated device is the ECAM a driver domain with a
//! passed-through PCI function sees (see `passthrough`); every other stage-2 fault is refused
//! with a reason for the log line that kills the VM.

use alloc::format;
use alloc::string::String;

use hypervisor::esr;

use crate::arch::vectors::TrapFrame;
use crate::passthrough::Passthrough;
use crate::vm::Vm;

/// Completes `vm`'s faulting access at `ipa` if an emulated device owns it; otherwise says why
/// not.
pub fn emulate(
    vm: &Vm,
    passthrough: Option<&mut Passthrough>,
    ipa: u64,
    esr: u64,
    frame: &mut TrapFrame,
) -> Result<(), String> {
    let Some(passthrough) = passthrough.filter(|p| p.owner_id == vm.id) else {
        return Err(String::from("no device at this address"));
    };
    let access = esr::mmio_access(esr).map_err(|e| format!("{e}"))?;
    passthrough
        .config_access(&vm.name, ipa, access, frame)
        .ok_or_else(|| String::from("no device at this address"))
}
