//! The hook for MMIO emulation: a stage-2 fault on an address that an emulated device owns is
//! completed here instead of killing the VM. No device is emulated yet, so every fault is
//! refused; an emulated device adds a match arm that decodes the access from the syndrome
//! (ISV, SAS, SRT, WnR), performs it against `frame.x[srt]`, and steps ELR past the instruction.

use crate::arch::vectors::TrapFrame;

/// Returns `Some(())` when the access was emulated and the vCPU may continue.
pub fn emulate(_ipa: u64, _esr: u64, _frame: &mut TrapFrame) -> Option<()> {
    None
}
