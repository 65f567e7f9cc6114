//! The devices and boot-time memory the hypervisor takes over, created here from addresses the
//! firmware (QEMU) hands over: the device tree, and what it names (GIC, UART, PCI ECAM, SMMU,
//! the boot bundle, the ITS). The device tree is trusted boot input, like the hypervisor image itself;
//! each device is claimed once, so no second driver for it can exist.

use core::sync::atomic::{AtomicBool, Ordering};

use super::ecam::Ecam;
use super::its::ItsMmio;
use super::smmu::{Smmu, SmmuError};
use super::uart::Pl011;
use super::{gic, mem};

static GIC_CLAIMED: AtomicBool = AtomicBool::new(false);
static ECAM_CLAIMED: AtomicBool = AtomicBool::new(false);
static SMMU_CLAIMED: AtomicBool = AtomicBool::new(false);
static ITS_CLAIMED: AtomicBool = AtomicBool::new(false);

/// The device tree QEMU placed at `pa`, or `None` if there is none.
pub fn device_tree(pa: u64) -> Option<&'static [u8]> {
    // SAFETY: QEMU puts the DTB in RAM (at `pa`, or at the start of RAM for an ELF), inside the
    // identity map, and nothing writes it.
    unsafe { mem::dtb_blob(pa) }
}

/// The boot bundle QEMU loaded at `[start, end)` (from the device tree's /chosen node).
pub fn boot_bundle(start: u64, end: u64) -> &'static [u8] {
    // SAFETY: QEMU loaded the initrd there; it is excluded from the frame allocator and never
    // written, so a shared 'static view is sound.
    unsafe { mem::phys_bytes(start, end.saturating_sub(start) as usize) }
}

/// The PL011 at `base` (the device tree's, or QEMU virt's fixed one before the tree is read).
/// Several handles to it may exist over time: the hypervisor writes it from one place under a
/// lock, and nothing else drives it.
pub fn uart(base: u64) -> Pl011 {
    // SAFETY: a PL011 of QEMU virt, in the identity map's Device region; VMs never map it.
    unsafe { Pl011::new(base as usize) }
}

/// Initialises the GICv3 distributor and every redistributor; the first call only.
pub fn init_gic(gicd: u64, gicr: u64, cpu_count: usize) {
    if GIC_CLAIMED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the device tree's GICv3 regions, identity-mapped; claimed once (flag above).
    unsafe { gic::init_primary(gicd as usize, gicr as usize, cpu_count) };
}

/// The PCI host bridge's ECAM at `base`; `None` if it was claimed already.
pub fn ecam(base: u64) -> Option<Ecam> {
    if ECAM_CLAIMED.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the device tree's ECAM, covering 256 buses, in the identity map's Device region;
    // claimed once (flag above).
    Some(unsafe { Ecam::new(base) })
}

/// Takes the SMMUv3 at `base` over (see [`Smmu::new`]); `None` if it was claimed already.
pub fn smmu(
    base: u64,
    sid_bits: u8,
    alloc: &mut dyn FnMut(usize, usize) -> Option<u64>,
) -> Option<Result<Smmu, SmmuError>> {
    if SMMU_CLAIMED.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the device tree's SMMUv3 register frame, in the identity map's Device region;
    // claimed once (flag above).
    Some(unsafe { Smmu::new(base, sid_bits, alloc) })
}

/// The GICv3/v4 ITS at `base`; `None` if it was claimed already.
pub fn its(base: u64) -> Option<ItsMmio> {
    if ITS_CLAIMED.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the device tree's ITS register frames (`arm,gic-v3-its`), in the identity map's
    // Device region below RAM; claimed once (flag above).
    Some(unsafe { ItsMmio::new(base) })
}
