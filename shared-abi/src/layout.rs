//! Guest-physical layout every VM sees (RAM, start-info page, grant and control-page windows),
//! and limits the hypervisor enforces on topologies.
//!
//! This module is a leaf: it uses nothing else of the crate, so every format module can build
//! on it without an import cycle.

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
pub const MAX_VMS: usize = 32;
pub const MAX_VCPUS_PER_VM: u32 = 8;
pub const MAX_VM_NAME_LEN: usize = 31;
pub const MAX_SETTINGS_LEN: usize = 2048;

/// Foreign frames are mapped only inside this IPA window of the caller (256 MiB starting at 4 GiB,
/// above all RAM); the rules are in [`crate::grant`].
pub const GRANT_WINDOW_BASE: u64 = 0x1_0000_0000;
pub const GRANT_WINDOW_SIZE: u64 = 0x1000_0000;

/// The start-info page is the last page of the VM's RAM; its GPA also arrives in x0 at entry.
pub const fn start_info_gpa(ram_bytes: u64) -> u64 {
    GUEST_RAM_BASE + ram_bytes - PAGE_SIZE
}

/// Start of the control-page window: where the hypervisor maps the control page of every
/// front-end/back-end connection (see [`crate::handshake`]), in both VMs of the connection.
///
/// It sits right above the grant window `[0x1_0000_0000, +256 MiB)`, inside the same gigabyte
/// `[0x1_0000_0000, 0x1_4000_0000)` that VMs map as Normal memory at stage 1, so a VM needs no
/// extra mapping to use its control pages, and a control page can never be mistaken for RAM or
/// for a grant mapping (GRANT_MAP refuses destinations outside the grant window).
pub const CONTROL_WINDOW_BASE: u64 = 0x1_1000_0000;

/// End of the gigabyte VMs map as Normal memory for the grant and control windows.
const NORMAL_WINDOW_END: u64 = 0x1_4000_0000;

/// IPA of the control page of the connection whose front-end is VM `frontend_id`.
///
/// The page sits at this same IPA in the front-end and in its back-end. Indexing by the
/// front-end's id works because a front-end has exactly one back-end, so the id names the
/// connection: a front-end finds its page from its own id, and a back-end with many front-ends
/// finds each connection's page from that front-end's id (its peers bitmap in the start-info
/// page), with no table to exchange. Ids are at most [`MAX_VMS`], so the result stays inside the
/// window (see the assertion below); page 0 (id 0, the hypervisor) is never used.
pub const fn control_page_ipa(frontend_id: u16) -> u64 {
    CONTROL_WINDOW_BASE + frontend_id as u64 * PAGE_SIZE
}

// The control window starts past the grant window, page aligned, and the page of the largest
// VM id ends inside the Normal gigabyte.
const _: () = assert!(CONTROL_WINDOW_BASE >= GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE);
const _: () = assert!(CONTROL_WINDOW_BASE.is_multiple_of(PAGE_SIZE));
const _: () = assert!(control_page_ipa(MAX_VMS as u16) + PAGE_SIZE <= NORMAL_WINDOW_END);
// VM ids must fit in u16 for the cast above to be exact.
const _: () = assert!(MAX_VMS < u16::MAX as usize);

/// Where a driver domain with a passed-through PCI function finds PCI configuration space: an
/// ECAM (256 buses) emulated by the hypervisor, in which only the passed function is present.
/// It sits at the IPA of QEMU virt's real high ECAM, inside the 512 GiB that VMs map at stage 1
/// (as Device memory, like everything outside RAM and the grant gigabyte), and is never mapped at
/// stage 2: every access traps and is answered by the hypervisor's configuration filter.
pub const PCI_ECAM_IPA: u64 = 0x40_1000_0000;
/// Size of the emulated ECAM: 256 buses of 1 MiB.
pub const PCI_ECAM_SIZE: u64 = 256 << 20;
/// `[start, end)` of the PCI memory window a driver domain places its function's BARs in. The
/// hypervisor maps it (IPA = PA, Device memory) and refuses BAR moves outside it. 16 MiB of the
/// bottom of QEMU virt's 32-bit PCI window: room for any NIC's BARs, below guest RAM.
pub const PCI_WINDOW_IPA: (u64, u64) = (0x1000_0000, 0x1100_0000);

const _: () = assert!(PCI_WINDOW_IPA.1 <= GUEST_RAM_BASE);

/// Where a guest with an emulated NIC (`nic = "emulated"`) finds its device's registers. Never
/// mapped at stage 2: every access traps, and the hypervisor forwards it to the device model
/// (see [`crate::ioreq`]). Below RAM and outside QEMU virt's own devices, in the range VMs map
/// as Device memory at stage 1.
pub const EMULATED_NIC_IPA: u64 = 0x0b00_0000;
/// Size of the emulated NIC's register window: one page.
pub const EMULATED_NIC_SIZE: u64 = PAGE_SIZE;

const _: () = assert!(EMULATED_NIC_IPA + EMULATED_NIC_SIZE <= PCI_WINDOW_IPA.0);
const _: () = assert!(PCI_ECAM_IPA + PCI_ECAM_SIZE <= 1 << 39);

/// Virtual interrupt IDs the hypervisor delivers to VMs (GICv3 INTIDs).
pub mod intid {
    /// EL1 virtual timer PPI (architected number on QEMU virt).
    pub const VIRTUAL_TIMER: u32 = 27;
    /// The VM's balloon target changed (a schedule point or BALLOON_SET_TARGET): a PPI, read
    /// the new target with `BALLOON_TARGET`. At most one copy pending.
    pub const TARGET_INTID: u32 = 21;
    /// Software-generated interrupts 0..16 are the guest's own; the diagnostic hypercall
    /// `TEST_INJECT` may raise any of them.
    pub const SGI_COUNT: u32 = 16;
    /// The interrupt of the PCI function passed through to a driver domain (its INTx line,
    /// whatever physical SPI it is wired to): an SPI number no other source uses.
    pub const PASSTHROUGH_INTX: u32 = 48;
    /// The emulated NIC's interrupt in a guest that has one: an SPI the device model raises
    /// with `IOREQ_SET_IRQ`, at most one copy pending (the guest's driver reads the device's
    /// status register to learn why).
    pub const EMULATED_NIC: u32 = 49;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_pages_are_one_per_frontend_and_inside_the_window() {
        assert_eq!(control_page_ipa(0), CONTROL_WINDOW_BASE);
        assert_eq!(control_page_ipa(1), 0x1_1000_1000);
        assert_eq!(
            control_page_ipa(MAX_VMS as u16),
            0x1_1000_0000 + MAX_VMS as u64 * 0x1000
        );
        for id in 1..=MAX_VMS as u16 {
            let ipa = control_page_ipa(id);
            assert!(ipa.is_multiple_of(PAGE_SIZE));
            assert!(
                !(GRANT_WINDOW_BASE..GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE).contains(&ipa),
                "{ipa:#x} is in the grant window"
            );
            assert!(ipa >= GUEST_RAM_BASE + MAX_VM_RAM, "{ipa:#x} could be RAM");
            assert!(ipa + PAGE_SIZE <= NORMAL_WINDOW_END);
        }
    }
}
