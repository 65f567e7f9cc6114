//! The machine state behind the HV lock ([`crate::locks::HvLocked`]): VMs, frames, VMIDs, the
//! sharing tables, the SMMU and the passed-through function. What the traps do with it is in
//! `hv`; its own module so that the lock module and the trap handlers both depend on it and
//! not on each other.

use alloc::vec::Vec;

use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::vmid::VmidAllocator;

use crate::iommu::Iommu;
use crate::passthrough::Passthrough;
use crate::sharing::Sharing;
use crate::vm::Vm;

/// The machine: everything a VM's stop or a sharing call touches. Under the HV lock.
pub struct Hv {
    pub frames: FrameAllocator,
    pub vmids: VmidAllocator,
    pub vms: Vec<Option<Vm>>,
    /// The VM (index into `vms`) of each vCPU; fixed at boot.
    pub vcpu_vm: Vec<usize>,
    pub sharing: Sharing,
    /// The SMMU (if the machine has one) and what is attached to it.
    pub iommu: Iommu,
    /// The PCI function passed through to a driver domain, if the topology names one.
    pub passthrough: Option<Passthrough>,
    /// VMs being reloaded for a restart outside the lock (out of `vms` meanwhile, but alive).
    pub reloading: usize,
    /// The NIC's driver domain's warm spare of RAM, if there was room for one (`spare`).
    pub spare: Option<hypervisor::restart::SpareRam>,
    /// Pages VMs gave back to the balloon and nobody has taken yet: how many frames
    /// BALLOON_POPULATE may still take from the free memory (see `ballooning`).
    pub balloon_credit: u64,
    /// Balloon frames between two lock holds: given back and being scrubbed (not yet in the
    /// credit), or set aside from the credit for a populate (not yet mapped or returned). The
    /// targets' free-memory rule counts them with the credit, so a batch in flight does not
    /// make a target that fits look as if it did not.
    pub balloon_in_transit: u64,
    /// The ITS when the machine has GICv4.0 direct injection (`None`: the NIC stays on INTx).
    pub its: Option<crate::gicv4::DirectInjection>,
}
