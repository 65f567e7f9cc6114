//! Secondary vCPUs: start vCPU `i` running a Rust function on its own stack, with the same MMU
//! setup, its GIC CPU interface initialised and IRQs unmasked.

use shared_abi::layout::MAX_VCPUS_PER_VM;
use spin::Mutex;

use crate::arch::boot;
use crate::psci;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmpError {
    /// The index is 0 (the boot vCPU) or not below the VM's vCPU count.
    #[error("cannot start vCPU {index}: this VM has vCPUs 0..{vcpus} and 0 is already running")]
    NoSuchVcpu { index: usize, vcpus: u32 },
    /// The hypervisor refused CPU_ON (e.g. `AlreadyOn`).
    #[error("PSCI CPU_ON failed: {0:?}")]
    Psci(psci::Error),
}

/// What one secondary vCPU runs, set by `cpu_on` before CPU_ON.
type EntrySlot = Mutex<Option<fn(usize)>>;

static ENTRIES: [EntrySlot; MAX_VCPUS_PER_VM as usize] =
    [const { Mutex::new(None) }; MAX_VCPUS_PER_VM as usize];

/// Starts vCPU `index` (1..vcpus) running `f(index)`. When `f` returns, the vCPU switches itself
/// off (PSCI CPU_OFF); the VM keeps running until its last vCPU is off or it calls SYSTEM_OFF.
pub fn cpu_on(index: usize, f: fn(usize)) -> Result<(), SmpError> {
    let vcpus = crate::start_info().vcpus;
    if index == 0 || index >= vcpus as usize || index >= ENTRIES.len() {
        return Err(SmpError::NoSuchVcpu { index, vcpus });
    }
    *ENTRIES[index].lock() = Some(f);
    psci::cpu_on(index as u64, boot::secondary_entry_address(), index as u64)
        .map_err(SmpError::Psci)
}

/// The function `cpu_on` stored for `index`.
pub(crate) fn take_entry(index: usize) -> Option<fn(usize)> {
    ENTRIES.get(index).and_then(|slot| slot.lock().take())
}
