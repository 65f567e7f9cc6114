//! The NIC's MSI-X vectors as GICv4 virtual LPIs (issue 15): the MSIX_MAP hypercall asks the
//! hypervisor to map vectors 0 (receive queue 0) and 1 (transmit queue 1) of our function to
//! vLPIs of our vCPU 0; we then program the function's MSI-X table with the doorbell IOVA it
//! answers (the ITS's translation page, mapped in our stage 2 at the MSI window, which the
//! SMMU walks for the device's writes) and Message Data = vector, enable MSI-X, and point each
//! virtqueue at its vector through the virtio common configuration's `queue_msix_vector` (the
//! configuration-change vector stays NO_VECTOR: we do not act on config changes). A vLPI is
//! then delivered by the GIC straight to our vCPU while it runs: no exit to the hypervisor.
//!
//! Without direct injection (GICv3, or the ITS failed) MSIX_MAP answers `NotSupported` and the
//! NIC stays on INTx; so does it on any other refusal, after saying why.

use alloc::format;
use alloc::string::String;
use core::ptr;

use shared_abi::hypercall::{Status, MSIX_MAP};
use virtio_drivers::transport::pci::bus::{
    Cam, ConfigurationAccess, DeviceFunction, PciRoot, PCI_CAP_ID_VNDR,
};
use vm_runtime::hypercall::{hvc, status};

/// PCI capability ID of MSI-X.
const CAP_ID_MSIX: u8 = 0x11;
/// Message Control: MSI-X Enable [15], Function Mask [14].
const MSIX_ENABLE: u32 = 1 << 15;
const MSIX_FUNCTION_MASK: u32 = 1 << 14;
/// Bytes of one MSI-X table entry (address low, address high, data, vector control).
const ENTRY_BYTES: u64 = 16;
/// virtio common configuration (virtio 1.2, 4.1.4.3): offsets of the fields we write.
const COMMON_MSIX_CONFIG: usize = 0x10;
const COMMON_QUEUE_SELECT: usize = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: usize = 0x1a;
/// virtio's "no vector" (VIRTIO_MSI_NO_VECTOR).
pub const NO_VECTOR: u16 = 0xffff;
/// virtio PCI capability type of the common configuration.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// The vectors we use: receive queue 0 -> vector 0, transmit queue 1 -> vector 1.
pub const VECTORS: u16 = 2;

/// The ECAM the hypervisor emulates for us, accessed as 32-bit words. Every access traps to
/// the hypervisor's configuration filter, so two of these over the same window (the
/// `PciRoot`'s and ours for the MSI-X capability) cannot disturb each other beyond what either
/// could do alone.
#[derive(Clone, Copy)]
pub struct Ecam {
    base: usize,
}

impl Ecam {
    /// # Safety
    /// `base` must be the ECAM window the hypervisor emulates, identity-mapped as Device memory
    /// at stage 1 (accesses to it only ever trap, they never touch our RAM).
    pub const unsafe fn new(base: u64) -> Ecam {
        Ecam {
            base: base as usize,
        }
    }

    fn addr(&self, function: DeviceFunction, reg: u8) -> usize {
        self.base + Cam::Ecam.cam_offset(function, reg & !3) as usize
    }
}

impl ConfigurationAccess for Ecam {
    fn read_word(&self, function: DeviceFunction, reg: u8) -> u32 {
        // SAFETY: an aligned word of the emulated ECAM (see `Ecam::new`); volatile is how MMIO
        // is read.
        unsafe { ptr::read_volatile(self.addr(function, reg) as *const u32) }
    }

    fn write_word(&mut self, function: DeviceFunction, reg: u8, data: u32) {
        // SAFETY: as in `read_word`.
        unsafe { ptr::write_volatile(self.addr(function, reg) as *mut u32, data) }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// Where the function's MSI-X capability and table are.
struct MsixCap {
    /// Offset of the capability in configuration space.
    at: u8,
    /// Entries in the table.
    table_size: u16,
    /// Address of the table (its BAR's address plus the table offset).
    table: u64,
}

fn find_msix(
    root: &PciRoot<Ecam>,
    ecam: &Ecam,
    f: DeviceFunction,
    bars: &[u64; 6],
) -> Option<MsixCap> {
    let cap = root.capabilities(f).find(|c| c.id == CAP_ID_MSIX)?;
    let table_size = (cap.private_header & 0x7ff) + 1;
    let table_word = ecam.read_word(f, cap.offset + 4);
    let bar = *bars.get((table_word & 7) as usize)?;
    if bar == 0 {
        return None;
    }
    Some(MsixCap {
        at: cap.offset,
        table_size,
        table: bar + u64::from(table_word & !7),
    })
}

/// The address of the virtio common configuration structure, from its vendor capability.
fn common_cfg(
    root: &PciRoot<Ecam>,
    ecam: &Ecam,
    f: DeviceFunction,
    bars: &[u64; 6],
) -> Option<usize> {
    let cap = root.capabilities(f).find(|c| {
        c.id == PCI_CAP_ID_VNDR && (c.private_header >> 8) as u8 == VIRTIO_PCI_CAP_COMMON_CFG
    })?;
    let bar = *bars.get((ecam.read_word(f, cap.offset + 4) & 0xff) as usize)?;
    let offset = ecam.read_word(f, cap.offset + 8);
    (bar != 0).then(|| (bar + u64::from(offset)) as usize)
}

/// MSIX_MAP: vectors `0..vectors` of function `routing_id` as vLPIs; the doorbell IOVA and the
/// vINTID of vector 0.
pub fn map(routing_id: u64, vectors: u64) -> Result<(u64, u32), Status> {
    let r = hvc(MSIX_MAP, [routing_id, vectors, 0, 0, 0, 0]);
    match status(r[0]) {
        Status::Ok => Ok((r[1], r[2] as u32)),
        refused => Err(refused),
    }
}

/// What the queues' vectors are programmed through (see [`super::PlatformAccess`]).
#[derive(Clone, Copy)]
pub struct QueueVectors {
    common: usize,
}

impl QueueVectors {
    fn write16(&self, offset: usize, value: u16) {
        // SAFETY: a 16-bit field of the virtio common configuration inside a BAR we placed in
        // the PCI window the hypervisor maps for us as Device memory (identity-mapped at stage
        // 1). The transport's own pointer to the same structure is only used through volatile
        // accesses too, from the same vCPU, under the NIC's lock or before it exists.
        unsafe { ptr::write_volatile((self.common + offset) as *mut u16, value) }
    }

    fn read16(&self, offset: usize) -> u16 {
        // SAFETY: as in `write16`.
        unsafe { ptr::read_volatile((self.common + offset) as *const u16) }
    }

    /// Points `queue` at MSI-X vector `queue` (and the configuration change at none); false if
    /// the device did not take it (it reads back NO_VECTOR for a vector it cannot use).
    pub fn assign(&self, queue: u16) -> bool {
        self.write16(COMMON_MSIX_CONFIG, NO_VECTOR);
        self.write16(COMMON_QUEUE_SELECT, queue);
        self.write16(COMMON_QUEUE_MSIX_VECTOR, queue);
        self.read16(COMMON_QUEUE_MSIX_VECTOR) == queue
    }
}

/// How the NIC's interrupts arrive.
pub enum Mode {
    /// vLPIs: the first vINTID (vector n is this + n) and the queues' vector programming.
    Vlpi {
        first_vintid: u32,
        queues: QueueVectors,
    },
    /// INTx, and why not vLPIs.
    Intx(String),
}

/// The hostile-input probes of MSIX_MAP (setting `msix_probe`): a function we do not own, 0
/// vectors and more than any table has, each with the status it must get. Run before the real
/// call; the second call's `Busy` is checked after it ([`probe_again`]).
pub fn probe_refusals(routing_id: u16) -> String {
    let cases = [
        ("not owned", u64::from(routing_id ^ 0x8), 1),
        ("0 vectors", u64::from(routing_id), 0),
        ("4096 vectors", u64::from(routing_id), 4096),
    ];
    let mut line = String::new();
    for (what, id, vectors) in cases {
        let got = match map(id, vectors) {
            Ok(_) => String::from("Ok"),
            Err(s) => format!("{s:?}"),
        };
        line += &format!("{what} {got}, ");
    }
    line
}

/// The second MSIX_MAP for the function (after a successful one): must be `Busy`.
pub fn probe_again(routing_id: u16) -> String {
    match map(u64::from(routing_id), u64::from(VECTORS)) {
        Ok(_) => String::from("again Ok"),
        Err(s) => format!("again {s:?}"),
    }
}

/// Asks for vLPIs and, when granted, programs the function's MSI-X table and enables MSI-X
/// (INTx is no longer used by the function). `handler` is registered for each vINTID first.
pub fn setup(
    root: &PciRoot<Ecam>,
    mut ecam: Ecam,
    f: DeviceFunction,
    routing_id: u16,
    bars: &[u64; 6],
    handler: vm_runtime::irq::Handler,
) -> Mode {
    let Some(cap) = find_msix(root, &ecam, f, bars) else {
        return Mode::Intx(String::from(
            "the function has no MSI-X table in a placed BAR",
        ));
    };
    let Some(common) = common_cfg(root, &ecam, f, bars) else {
        return Mode::Intx(String::from("no virtio common configuration found"));
    };
    if cap.table_size < VECTORS {
        return Mode::Intx(format!("its MSI-X table has {} vector(s)", cap.table_size));
    }
    let (doorbell, first_vintid) = match map(u64::from(routing_id), u64::from(VECTORS)) {
        Ok(answer) => answer,
        Err(Status::NotSupported) => {
            return Mode::Intx(String::from(
                "MSIX_MAP: NotSupported (no vLPI direct injection)",
            ))
        }
        Err(refused) => return Mode::Intx(format!("MSIX_MAP refused: {refused:?}")),
    };
    for n in 0..u32::from(VECTORS) {
        if let Err(why) = vm_runtime::irq::register(first_vintid + n, handler) {
            // The vectors stay mapped but unused: MSI-X is not enabled, INTx carries on.
            return Mode::Intx(format!("vINTID {}: {why}", first_vintid + n));
        }
    }
    for n in 0..u64::from(VECTORS) {
        let entry = cap.table + n * ENTRY_BYTES;
        let words = [doorbell as u32, (doorbell >> 32) as u32, n as u32, 0];
        for (i, word) in words.into_iter().enumerate() {
            // SAFETY: entry n (< the table size) of the MSI-X table, inside a BAR we placed in
            // the PCI window the hypervisor maps for us as Device memory; vector control last,
            // which unmasks the entry once its address and data are in place.
            unsafe { ptr::write_volatile((entry + 4 * i as u64) as *mut u32, word) }
        }
    }
    let control = ecam.read_word(f, cap.at);
    ecam.write_word(
        f,
        cap.at,
        (control | MSIX_ENABLE << 16) & !(MSIX_FUNCTION_MASK << 16),
    );
    Mode::Vlpi {
        first_vintid,
        queues: QueueVectors { common },
    }
}
