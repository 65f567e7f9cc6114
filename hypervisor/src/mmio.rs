//! MMIO emulation: a stage-2 fault on an address that an emulated device owns is completed here
//! instead of killing the VM. The only emulated device is the ECAM a driver domain with a
//! passed-through PCI function sees (see `passthrough`); every other stage-2 fault is refused
//! with a reason for the log line that kills the VM.

use alloc::format;
use alloc::string::String;

use hypervisor::esr;
use hypervisor::sched::VcpuId;

use crate::arch::vectors::TrapFrame;
use crate::hv::Hv;

/// Completes the faulting access of vCPU `id` at `ipa` if an emulated device owns it; otherwise
/// says why not.
pub fn emulate(
    hv: &mut Hv,
    id: VcpuId,
    ipa: u64,
    esr: u64,
    frame: &mut TrapFrame,
) -> Result<(), String> {
    // Field by field, so the VM can be read while the passthrough state is changed.
    let Some(vm) = hv.vms[hv.vcpus[id].vm].as_ref() else {
        return Err(String::from("the VM is gone"));
    };
    let Some(passthrough) = hv.passthrough.as_mut().filter(|p| p.owner_id == vm.id) else {
        return Err(String::from("no device at this address"));
    };
    let access = esr::mmio_access(esr).map_err(|e| format!("{e}"))?;
    passthrough
        .config_access(&vm.name, ipa, access, frame)
        .ok_or_else(|| String::from("no device at this address"))
}
