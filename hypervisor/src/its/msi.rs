//! The NIC's MSI-X vectors as vLPIs (issue 15, step 3's pure part; the binary's side is
//! `gicv4::msix_map_for`, the call's route `dispatch::msix_map`): the MSIX_MAP hypercall's checks (the caller owns the function, asks for 1..=its table
//! size vectors, once), the MSI window (the doorbell IOVA the device writes: the ITS's
//! translation page at Linux's software MSI window), the ITS commands that map the device's
//! events to the owner's vPE (MAPD, VMAPTI per vector with the vPE's doorbell, VINVALL, VSYNC)
//! and undo it (DISCARD per vector, MAPD V = 0), and the vLPI configuration bytes.

use alloc::vec::Vec;

use shared_abi::hypercall::Status;
use shared_abi::pci::Bdf;

use super::vpe::{doorbell_of, VINTID_BITS};
use super::{
    discard, lpi_config_byte, mapd, vinvall, vmapti, vsync, Command, Doorbell, ItsError,
    IttMapping, GITS_TRANSLATER, LPI_INTID_BASE,
};

/// IPA (and IOVA) of the MSI window in the driver domain: Linux's 1 MiB software MSI window
/// (`MSI_IOVA_BASE`), where only the ITS's translation page is mapped.
pub const MSI_WINDOW_IPA: u64 = 0x0800_0000;
/// Bytes of the window (Linux's `MSI_IOVA_LENGTH`).
pub const MSI_WINDOW_BYTES: u64 = 0x10_0000;
const PAGE: u64 = 0x1000;

/// The physical page of the ITS's GITS_TRANSLATER (what the window maps) and the doorbell IOVA
/// the device writes, for the ITS whose frames start at `its_base`.
pub fn translater(its_base: u64) -> (u64, u64) {
    let pa = its_base + GITS_TRANSLATER as u64;
    (pa & !(PAGE - 1), MSI_WINDOW_IPA + (pa & (PAGE - 1)))
}

/// Vectors of an MSI-X capability: Message Control's Table Size [10:0] is N - 1.
pub fn msix_table_size(message_control: u16) -> u16 {
    (message_control & 0x7ff) + 1
}

/// PCI capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Configuration register holding the first capability's offset (Capabilities Pointer).
const REG_CAP_POINTER: u16 = 0x34;
/// Status register bit: the function has a capability list.
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
/// Most capabilities walked: the standard space holds at most 48 four-byte-aligned ones
/// above 0x40, so a longer walk is a loop.
const MAX_CAPS: usize = 48;

/// Configuration-space offset of a function's MSI-X capability (`at`) and its table size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    pub at: u16,
    pub table_size: u16,
}

impl MsixCapability {
    /// Where Message Control is (a 16-bit register; Enable is bit 15).
    pub fn message_control(&self) -> u16 {
        self.at + 2
    }
}

/// Message Control's MSI-X Enable bit.
pub const MSIX_ENABLE: u16 = 1 << 15;

/// A function's MSI-X capability, found by walking its capability list with `read(reg)` (an
/// aligned 32-bit configuration read). `None`: no list, no MSI-X capability, or a list that
/// loops or points outside 0x40..0x100 (the device's own config space is the owner's to
/// program, so the walk is bounded and checked like guest input).
pub fn find_msix(mut read: impl FnMut(u16) -> u32) -> Option<MsixCapability> {
    if read(0x04) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = (read(REG_CAP_POINTER) & 0xfc) as u16;
    for _ in 0..MAX_CAPS {
        if !(0x40..0x100).contains(&at) {
            return None;
        }
        let header = read(at);
        if header as u8 == CAP_ID_MSIX {
            return Some(MsixCapability {
                at,
                table_size: msix_table_size((header >> 16) as u16),
            });
        }
        at = ((header >> 8) & 0xfc) as u16;
    }
    None
}

/// The MSI-X table size of a function ([`find_msix`]).
pub fn find_msix_table_size(read: impl FnMut(u16) -> u32) -> Option<u16> {
    find_msix(read).map(|cap| cap.table_size)
}

/// What the hypervisor knows when MSIX_MAP arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Direct injection is in service and the caller has a vPE on its vCPU 0.
    pub direct_injection: bool,
    /// The function the caller owns (passthrough), if any.
    pub owned: Option<Bdf>,
    /// Its MSI-X table size (`None`: no MSI-X capability).
    pub table_size: Option<u16>,
    /// Vectors already mapped for it (0: none).
    pub mapped: u16,
}

/// Why MSIX_MAP was refused, and the status the caller gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no vLPI direct injection on this machine")]
    NoDirectInjection,
    #[error("routing id {0:#x} is not a PCI function the caller owns")]
    NotOwner(u64),
    #[error("the function has no MSI-X capability")]
    NoMsix,
    #[error("{asked} vectors asked, the function has 1..={has}")]
    Vectors { asked: u64, has: u16 },
    #[error("the function's vectors are mapped already")]
    AlreadyMapped,
}

impl Refusal {
    pub fn status(self) -> Status {
        match self {
            Refusal::NoDirectInjection | Refusal::NoMsix => Status::NotSupported,
            Refusal::NotOwner(_) => Status::Denied,
            Refusal::Vectors { .. } => Status::InvalidArgument,
            Refusal::AlreadyMapped => Status::Busy,
        }
    }
}

/// Checks MSIX_MAP's x1 (routing id) and x2 (vectors) against `facts`: the function and the
/// vector count to map.
pub fn check(facts: &Facts, routing_id: u64, vectors: u64) -> Result<(Bdf, u16), Refusal> {
    // Ownership first: a VM that owns no function is refused the same way on every machine
    // (it learns nothing of the GIC), and only the owner gets the INTx cue.
    let owned = facts
        .owned
        .filter(|bdf| u64::from(bdf.routing_id()) == routing_id)
        .ok_or(Refusal::NotOwner(routing_id))?;
    if !facts.direct_injection {
        return Err(Refusal::NoDirectInjection);
    }
    let has = facts.table_size.ok_or(Refusal::NoMsix)?;
    if vectors == 0 || vectors > u64::from(has) {
        return Err(Refusal::Vectors {
            asked: vectors,
            has,
        });
    }
    if facts.mapped != 0 {
        return Err(Refusal::AlreadyMapped);
    }
    Ok((owned, vectors as u16))
}

/// vINTID of vector 0: the first LPI. Vector n is this + n (below 2^[`VINTID_BITS`]).
pub const FIRST_VINTID: u32 = LPI_INTID_BASE;
/// Priority of the NIC's vLPIs in the owner's configuration table (the driver domain's
/// priority mask lets everything above 0xf0 through).
pub const VLPI_PRIORITY: u8 = 0xa0;

/// The commands that deliver events `0..vectors` of device `device_id` (ITT at `itt`) as
/// vLPIs FIRST_VINTID + n of vPE `vpeid`, each with that vPE's doorbell.
pub fn map_commands(
    device_id: u32,
    itt: IttMapping,
    vectors: u16,
    vpeid: u16,
) -> Result<Vec<Command>, ItsError> {
    let doorbell = doorbell_of(vpeid).map_err(|_| ItsError::BadDoorbell(u32::from(vpeid)))?;
    let mut commands = Vec::with_capacity(usize::from(vectors) + 3);
    commands.push(mapd(device_id, Some(itt))?);
    for event in 0..u32::from(vectors) {
        commands.push(vmapti(
            device_id,
            event,
            vpeid,
            vintid(event)?,
            Doorbell::Lpi(doorbell),
        )?);
    }
    commands.push(vinvall(vpeid));
    commands.push(vsync(vpeid));
    Ok(commands)
}

/// The commands that undo [`map_commands`]: DISCARD each event, then MAPD V = 0 (after which an
/// MSI from the device translates to nothing and is dropped).
pub fn unmap_commands(device_id: u32, vectors: u16) -> Result<Vec<Command>, ItsError> {
    let mut commands: Vec<Command> = (0..u32::from(vectors))
        .map(|event| discard(device_id, event))
        .collect();
    commands.push(mapd(device_id, None)?);
    Ok(commands)
}

/// vINTID of event `event`.
pub fn vintid(event: u32) -> Result<u32, ItsError> {
    let id = FIRST_VINTID + event;
    if id >> VINTID_BITS != 0 {
        return Err(ItsError::IdTooLarge {
            what: "vINTID",
            value: u64::from(id),
            bits: VINTID_BITS,
        });
    }
    Ok(id)
}

/// The configuration-table bytes (offset from the table's start, byte) that enable vectors
/// `0..vectors`' vLPIs.
pub fn config_bytes(vectors: u16) -> Result<Vec<(u64, u8)>, ItsError> {
    let byte = lpi_config_byte(VLPI_PRIORITY, true)?;
    (0..u32::from(vectors))
        .map(|event| Ok((u64::from(vintid(event)? - LPI_INTID_BASE), byte)))
        .collect()
}

#[cfg(test)]
mod tests;
