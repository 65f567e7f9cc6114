//! Guest-physical layout every VM sees, and limits the hypervisor enforces on topologies.

/// Every VM sees its RAM starting here, so one image serves many VMs. It matches QEMU virt's RAM
/// base, which keeps guest images linkable like ordinary bare-metal programs for that board.
pub const GUEST_RAM_BASE: u64 = 0x4000_0000;

/// Stage-2 block size; VM RAM sizes are multiples of it so RAM maps with 2 MiB blocks.
pub const BLOCK_SIZE: u64 = 2 * 1024 * 1024;
pub const PAGE_SIZE: u64 = 4096;

/// Smallest and largest RAM one VM may ask for.
pub const MIN_VM_RAM: u64 = BLOCK_SIZE;
pub const MAX_VM_RAM: u64 = 1024 * 1024 * 1024;

/// Limits on the topology, checked when the bundle is parsed.
pub const MAX_VMS: usize = 16;
pub const MAX_VCPUS_PER_VM: u32 = 8;
pub const MAX_VM_NAME_LEN: usize = 31;
pub const MAX_SETTINGS_LEN: usize = 2048;

/// The start-info page is the last page of the VM's RAM; its GPA also arrives in x0 at entry.
pub const fn start_info_gpa(ram_bytes: u64) -> u64 {
    GUEST_RAM_BASE + ram_bytes - PAGE_SIZE
}

/// Virtual interrupt IDs the hypervisor delivers to VMs (GICv3 INTIDs).
pub mod intid {
    /// EL1 virtual timer PPI (architected number on QEMU virt).
    pub const VIRTUAL_TIMER: u32 = 27;
    /// Software-generated interrupts 0..16 are the guest's own; the diagnostic hypercall
    /// `TEST_INJECT` may raise any of them.
    pub const SGI_COUNT: u32 = 16;
}
