//! GICv3 ITS and GICv4.0 direct injection: command encodings, register and table layouts.
//!
//! This module owns the bit-level knowledge of the Interrupt Translation Service that issue 15's
//! vLPI direct injection needs: the 32-byte commands of the ITS command queue (physical MAPD,
//! MAPC, MAPTI/MAPI, INV, INVALL, SYNC, DISCARD and the GICv4.0 virtual VMAPP, VMAPTI/VMAPI,
//! VMOVP, VMOVI, VSYNC, VINVALL), GITS_TYPER decoding, the GITS_BASER<n> values for the device,
//! collection and vPE tables, the command queue (GITS_CBASER/CWRITER/CREADR) ring arithmetic,
//! ITT sizing, and the GICv4.0 redistributor's GICR_VPROPBASER/GICR_VPENDBASER.
//!
//! Nothing here touches the device: every function turns plain values into other plain values,
//! and every field is range-checked (an out-of-range value is an [`ItsError`], never truncated).
//! Field positions follow the architecture (Arm IHI 0069, "Arm Generic Interrupt Controller
//! Architecture Specification, GIC architecture version 3 and version 4": §5.3 "ITS commands",
//! and the GITS_* and GICR_V* register descriptions) and are cross-checked against the `FIELD(...)` macros of QEMU's
//! `hw/intc/gicv3_internal.h`, which is what the emulated GIC decodes
//! (`hw/intc/arm_gicv3_its.c`, `process_*`), and Linux's `its_encode_*` in
//! `drivers/irqchip/irq-gic-v3-its.c`, which agree on every command field. Only GICv4.0 is modelled: QEMU 10's TCG GIC does
//! not implement GICv4.1, whose VMAPP, VMOVP and VPENDBASER layouts differ.

/// Bits [51:0]: the physical address width of every address field below.
const PA_LIMIT: u64 = 1 << 52;
const SZ_4K: u64 = 0x1000;
const SZ_64K: u64 = 0x1_0000;

// ---------------------------------------------------------------------------------------------
// Registers (offsets from the ITS base; IHI 0069 GITS_* register map, QEMU
// `arm_gicv3_its_common.h`).

/// GITS_CTLR: Enabled (bit 0), Quiescent (bit 31).
pub const GITS_CTLR: usize = 0x0000;
/// GITS_IIDR.
pub const GITS_IIDR: usize = 0x0004;
/// GITS_TYPER (64-bit): features, decoded by [`Typer::decode`].
pub const GITS_TYPER: usize = 0x0008;
/// GITS_CBASER (64-bit): the command queue.
pub const GITS_CBASER: usize = 0x0080;
/// GITS_CWRITER (64-bit): written by software, the byte offset of the next free command slot.
pub const GITS_CWRITER: usize = 0x0088;
/// GITS_CREADR (64-bit): advanced by the ITS.
pub const GITS_CREADR: usize = 0x0090;
/// GITS_BASER0; GITS_BASER<n> is at `GITS_BASER0 + 8 * n`, n in 0..8.
pub const GITS_BASER0: usize = 0x0100;
/// Number of GITS_BASER<n> registers.
pub const GITS_BASER_COUNT: usize = 8;
/// GITS_TRANSLATER, in the second 64 KiB frame: the doorbell a device's MSI write hits. The
/// driver domain's stage 2 maps this one page (and nothing else of the ITS) at its MSI IOVA.
pub const GITS_TRANSLATER: usize = 0x1_0040;
/// Size of the ITS register space (control frame + translation frame).
pub const ITS_REGISTER_SPACE: usize = 0x2_0000;
/// GITS_CTLR.Enabled.
pub const GITS_CTLR_ENABLED: u32 = 1 << 0;
/// GITS_CTLR.Quiescent (read-only).
pub const GITS_CTLR_QUIESCENT: u32 = 1 << 31;

/// Offset of a GICv4 redistributor's VLPI_base frame from its RD_base (QEMU `GICR_VLPI_OFFSET`).
pub const GICR_VLPI_FRAME: usize = 0x2_0000;
/// GICR_VPROPBASER, from RD_base (QEMU: `GICR_VLPI_OFFSET + 0x70`).
pub const GICR_VPROPBASER: usize = GICR_VLPI_FRAME + 0x70;
/// GICR_VPENDBASER, from RD_base (QEMU: `GICR_VLPI_OFFSET + 0x78`).
pub const GICR_VPENDBASER: usize = GICR_VLPI_FRAME + 0x78;
/// A GICv4 redistributor is four 64 KiB frames (RD, SGI, VLPI, reserved); a GICv3 one two
/// (QEMU `GICV4_REDIST_SIZE`).
pub const GICV4_REDIST_STRIDE: usize = 0x4_0000;

/// First LPI INTID (QEMU `GICV3_LPI_INTID_START`); physical and virtual alike.
pub const LPI_INTID_BASE: u32 = 8192;
/// The doorbell field value meaning "no doorbell" (QEMU `INTID_SPURIOUS`, `valid_doorbell`).
pub const NO_DOORBELL: u32 = 1023;
/// Fewest INTID bits that reach an LPI (2^14 = 16384 > 8192).
pub const MIN_LPI_ID_BITS: u32 = 14;

// Memory attributes every table, queue and redistributor base register gets: the hypervisor's
// RAM is Normal Inner/Outer Write-Back, Inner Shareable (as Linux programs its ITS).
/// Cacheability field value: Normal, Inner Write-Back, read- and write-allocate (0b111).
const CACHE_RAWAWB: u64 = 0b111;
/// Shareability field value: Inner Shareable (0b01).
const SHARE_INNER: u64 = 0b01;

/// Why an ITS value cannot be encoded, or a read-back value is not one the hypervisor can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItsError {
    /// An address field is not aligned as its register or command requires.
    #[error("{what} {value:#x} is not {align:#x}-aligned")]
    Misaligned {
        what: &'static str,
        value: u64,
        align: u64,
    },
    /// An address does not fit the 52-bit physical address fields.
    #[error("{what} {value:#x} is beyond the 52-bit physical address space")]
    AddressTooHigh { what: &'static str, value: u64 },
    /// An interrupt ID that must be an LPI is below 8192.
    #[error("{what} {intid} is not an LPI (LPIs start at 8192)")]
    NotAnLpi { what: &'static str, intid: u32 },
    /// An interrupt ID needs more ID bits than the table or ITS provides.
    #[error("{what} {value:#x} needs more than {bits} ID bits")]
    IdTooLarge {
        what: &'static str,
        value: u64,
        bits: u32,
    },
    /// A number of ID bits outside what the field can express.
    #[error("{what}: {bits} ID bits is outside {min}..={max}")]
    IdBits {
        what: &'static str,
        bits: u32,
        min: u32,
        max: u32,
    },
    /// A doorbell that is neither an LPI nor 1023 ("no doorbell").
    #[error("doorbell {0} is neither an LPI nor 1023")]
    BadDoorbell(u32),
    /// A page count outside the 1..=256 a BASER/CBASER Size field expresses.
    #[error("{pages} pages is outside 1..=256")]
    PageCount { pages: u64 },
    /// A device with no events.
    #[error("a device needs at least one event")]
    NoEvents,
    /// A GITS_BASER<n> that holds a different (or no) table type.
    #[error("GITS_BASER holds table type {found}, not {expected}")]
    WrongTableType { expected: u8, found: u8 },
    /// A table entry size the hypervisor's layout does not match.
    #[error("table entry size {0} bytes is not usable")]
    EntrySize(u32),
    /// A processor number given to an ITS that addresses redistributors physically, or the
    /// other way round.
    #[error("RDbase form does not match GITS_TYPER.PTA")]
    RdBaseForm,
    /// A redistributor processor number beyond the 16 bits of GICR_TYPER.Processor_Number.
    #[error("processor number {0} does not fit 16 bits")]
    ProcessorNumber(u64),
    /// No free slot in the command queue.
    #[error("the ITS command queue is full")]
    QueueFull,
    /// A queue offset that is not a slot of this queue (misaligned or beyond its end).
    #[error("command queue offset {0:#x} is not a slot of this queue")]
    QueueOffset(u64),
    /// An LPI priority with bits [1:0] set: the configuration byte holds bits [7:2] only.
    #[error("LPI priority {0:#x} has bits [1:0] set")]
    Priority(u8),
}

fn check_addr(what: &'static str, value: u64, align: u64) -> Result<u64, ItsError> {
    if value >= PA_LIMIT {
        return Err(ItsError::AddressTooHigh { what, value });
    }
    if !value.is_multiple_of(align) {
        return Err(ItsError::Misaligned { what, value, align });
    }
    Ok(value)
}

fn check_lpi(what: &'static str, intid: u32) -> Result<u32, ItsError> {
    if intid < LPI_INTID_BASE {
        return Err(ItsError::NotAnLpi { what, intid });
    }
    Ok(intid)
}

fn check_id_bits(what: &'static str, bits: u32, min: u32, max: u32) -> Result<u32, ItsError> {
    if bits < min || bits > max {
        return Err(ItsError::IdBits {
            what,
            bits,
            min,
            max,
        });
    }
    Ok(bits)
}

/// Pages (1..=256) into a Size field (pages - 1).
fn size_field(pages: u64) -> Result<u64, ItsError> {
    if !(1..=256).contains(&pages) {
        return Err(ItsError::PageCount { pages });
    }
    Ok(pages - 1)
}

// ---------------------------------------------------------------------------------------------
// Commands (IHI 0069 §5.3). Every command is 32 bytes, four little-endian doublewords; DW0
// bits [7:0] hold the command number (QEMU `CMD_MASK`, `GITS_CMD_*`).

/// One command-queue entry, as the ITS reads it: four doublewords, DW0 first.
pub type Command = [u64; 4];
/// Bytes of one command (QEMU `GITS_CMDQ_ENTRY_SIZE`).
pub const COMMAND_BYTES: u64 = 32;

/// Command numbers (DW0 bits [7:0]; QEMU `GITS_CMD_*`).
pub mod cmd {
    pub const SYNC: u8 = 0x05;
    pub const MAPD: u8 = 0x08;
    pub const MAPC: u8 = 0x09;
    pub const MAPTI: u8 = 0x0a;
    pub const MAPI: u8 = 0x0b;
    pub const INV: u8 = 0x0c;
    pub const INVALL: u8 = 0x0d;
    pub const DISCARD: u8 = 0x0f;
    pub const VMOVI: u8 = 0x21;
    pub const VMOVP: u8 = 0x22;
    pub const VSYNC: u8 = 0x25;
    pub const VMAPP: u8 = 0x29;
    pub const VMAPTI: u8 = 0x2a;
    pub const VMAPI: u8 = 0x2b;
    pub const VINVALL: u8 = 0x2d;
}

// Field positions shared by several commands.
/// DeviceID, DW0 [63:32] (QEMU `DEVID_SHIFT`, `VMAPTI_0.DEVICEID`, `INV_0.DEVICEID`).
const DEVICE_ID_SHIFT: u32 = 32;
/// vPEID, DW1 [47:32] (QEMU `VMAPP_1.VPEID`, `VMAPTI_1.VPEID`, `VMOVP_1.VPEID`, ...).
const VPEID_SHIFT: u32 = 32;
/// RDbase, DW2 [51:16] (QEMU `MAPC.RDBASE`, `VMAPP_2.RDBASE`, `VMOVP_2.RDBASE`).
const RDBASE_SHIFT: u32 = 16;
/// V (valid), DW2 [63] (QEMU `CMD_FIELD_VALID_MASK`, `VMAPP_2.V`).
const VALID: u64 = 1 << 63;

/// The target redistributor of MAPC, SYNC, VMAPP and VMOVP. Which form an ITS takes is fixed
/// by GITS_TYPER.PTA ([`Typer::rdbase`] picks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdBase {
    /// PTA = 0: the redistributor's GICR_TYPER.Processor_Number (16 bits; QEMU's form, which
    /// it checks against the number of CPUs, `RDBASE_PROCNUM_MASK`).
    ProcessorNumber(u16),
    /// PTA = 1: the redistributor's physical address, 64 KiB-aligned; bits [51:16] go in the
    /// field.
    Address(u64),
}

impl RdBase {
    /// The value of the command's RDbase field, DW2 [51:16], in place.
    fn field(self) -> Result<u64, ItsError> {
        match self {
            RdBase::ProcessorNumber(n) => Ok(u64::from(n) << RDBASE_SHIFT),
            RdBase::Address(pa) => check_addr("redistributor address", pa, SZ_64K),
        }
    }
}

fn command(number: u8, dw0_high: u64, dw1: u64, dw2: u64, dw3: u64) -> Command {
    [u64::from(number) | dw0_high, dw1, dw2, dw3]
}

fn device_event(number: u8, device_id: u32, event_id: u32) -> Command {
    // DeviceID DW0 [63:32], EventID DW1 [31:0] (QEMU `DEVID_MASK`, `EVENTID_MASK`).
    command(
        number,
        u64::from(device_id) << DEVICE_ID_SHIFT,
        u64::from(event_id),
        0,
        0,
    )
}

/// Where MAPD points a device: its Interrupt Translation Table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IttMapping {
    /// Physical address of the ITT, 256-byte aligned (ITT_addr holds bits [51:8]).
    pub itt_addr: u64,
    /// EventID bits the ITT covers, 1..=32 (the Size field holds this minus one).
    pub event_id_bits: u32,
}

/// MAPD: map DeviceID to an ITT (`Some`) or unmap it (`None`, V = 0).
///
/// DW0 [63:32] DeviceID; DW1 [4:0] Size = EventID bits - 1 (QEMU `SIZE_MASK`); DW2 [51:8]
/// ITT_addr (QEMU `ITTADDR_SHIFT`/`ITTADDR_LENGTH`), DW2 [63] V.
pub fn mapd(device_id: u32, itt: Option<IttMapping>) -> Result<Command, ItsError> {
    let (dw1, dw2) = match itt {
        None => (0, 0),
        Some(m) => {
            let bits = check_id_bits("MAPD EventID", m.event_id_bits, 1, 32)?;
            let addr = check_addr("ITT address", m.itt_addr, ITT_ALIGN)?;
            (u64::from(bits - 1), VALID | addr)
        }
    };
    Ok(command(
        cmd::MAPD,
        u64::from(device_id) << DEVICE_ID_SHIFT,
        dw1,
        dw2,
        0,
    ))
}

/// MAPC: map collection ICID to a redistributor (`Some`) or unmap it (`None`).
///
/// DW2 [15:0] ICID (QEMU `ICID_MASK`), DW2 [51:16] RDbase (QEMU `MAPC.RDBASE`), DW2 [63] V.
pub fn mapc(icid: u16, target: Option<RdBase>) -> Result<Command, ItsError> {
    let dw2 = match target {
        None => u64::from(icid),
        Some(rd) => VALID | rd.field()? | u64::from(icid),
    };
    Ok(command(cmd::MAPC, 0, 0, dw2, 0))
}

/// MAPTI: map (DeviceID, EventID) to physical LPI `pintid` in collection `icid`.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID, DW1 [63:32] pINTID (QEMU `pINTID_SHIFT`);
/// DW2 [15:0] ICID.
pub fn mapti(device_id: u32, event_id: u32, pintid: u32, icid: u16) -> Result<Command, ItsError> {
    let pintid = check_lpi("MAPTI pINTID", pintid)?;
    let mut c = device_event(cmd::MAPTI, device_id, event_id);
    c[1] |= u64::from(pintid) << 32;
    c[2] = u64::from(icid);
    Ok(c)
}

/// MAPI: MAPTI with pINTID = EventID, so the EventID must itself be an LPI.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID; DW2 [15:0] ICID.
pub fn mapi(device_id: u32, event_id: u32, icid: u16) -> Result<Command, ItsError> {
    check_lpi("MAPI EventID (used as pINTID)", event_id)?;
    let mut c = device_event(cmd::MAPI, device_id, event_id);
    c[2] = u64::from(icid);
    Ok(c)
}

/// INV: re-read the configuration of the (virtual or physical) LPI (DeviceID, EventID) maps to.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID (QEMU `INV_0.DEVICEID`, `INV_1.EVENTID`).
pub fn inv(device_id: u32, event_id: u32) -> Command {
    device_event(cmd::INV, device_id, event_id)
}

/// DISCARD: remove the mapping of (DeviceID, EventID) and its pending state.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID.
pub fn discard(device_id: u32, event_id: u32) -> Command {
    device_event(cmd::DISCARD, device_id, event_id)
}

/// INVALL: re-read the configuration of every LPI of collection ICID. DW2 [15:0] ICID.
pub fn invall(icid: u16) -> Command {
    command(cmd::INVALL, 0, 0, u64::from(icid), 0)
}

/// SYNC: wait until every earlier physical-LPI effect on the redistributor is visible.
/// DW2 [51:16] RDbase.
pub fn sync(target: RdBase) -> Result<Command, ItsError> {
    Ok(command(cmd::SYNC, 0, 0, target.field()?, 0))
}

/// The doorbell of a virtual mapping: the physical LPI the ITS raises when the vLPI arrives
/// while its vPE is not resident, or none (1023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// No doorbell (encoded 1023): the vLPI waits in the pending table for the next residency.
    None,
    /// This physical LPI.
    Lpi(u32),
}

impl Doorbell {
    fn field(self) -> Result<u64, ItsError> {
        match self {
            Doorbell::None => Ok(u64::from(NO_DOORBELL)),
            Doorbell::Lpi(id) if id >= LPI_INTID_BASE => Ok(u64::from(id)),
            Doorbell::Lpi(id) => Err(ItsError::BadDoorbell(id)),
        }
    }
}

/// What VMAPP maps a vPE to (GICv4.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpeMapping {
    /// The redistributor the vPE is scheduled on.
    pub target: RdBase,
    /// Physical address of the vPE's virtual pending table, 64 KiB-aligned.
    pub vpt_addr: u64,
    /// vINTID bits the pending table covers, 14..=32 (VPT_size holds this minus one).
    pub vintid_bits: u32,
}

/// VMAPP (GICv4.0): map vPEID to a redistributor and virtual pending table (`Some`), or unmap
/// it (`None`, V = 0).
///
/// DW1 [47:32] vPEID (QEMU `VMAPP_1.VPEID`); DW2 [51:16] RDbase, DW2 [63] V (`VMAPP_2`);
/// DW3 [4:0] VPT_size = vINTID bits - 1, DW3 [51:16] VPT_addr (`VMAPP_3`; bits [7:5] and
/// DW0 [9:8]/[51:16] are GICv4.1 fields, left 0).
pub fn vmapp(vpeid: u16, mapping: Option<VpeMapping>) -> Result<Command, ItsError> {
    let dw1 = u64::from(vpeid) << VPEID_SHIFT;
    let (dw2, dw3) = match mapping {
        None => (0, 0),
        Some(m) => {
            let bits = check_id_bits("VMAPP vINTID", m.vintid_bits, MIN_LPI_ID_BITS, 32)?;
            let vpt = check_addr("virtual pending table", m.vpt_addr, SZ_64K)?;
            (VALID | m.target.field()?, vpt | u64::from(bits - 1))
        }
    };
    Ok(command(cmd::VMAPP, 0, dw1, dw2, dw3))
}

/// VMAPTI: map (DeviceID, EventID) to vLPI `vintid` of vPE `vpeid`.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID, DW1 [47:32] vPEID; DW2 [31:0] vINTID,
/// DW2 [63:32] Doorbell pINTID (QEMU `VMAPTI_0/1/2`).
pub fn vmapti(
    device_id: u32,
    event_id: u32,
    vpeid: u16,
    vintid: u32,
    doorbell: Doorbell,
) -> Result<Command, ItsError> {
    let vintid = check_lpi("VMAPTI vINTID", vintid)?;
    let mut c = device_event(cmd::VMAPTI, device_id, event_id);
    c[1] |= u64::from(vpeid) << VPEID_SHIFT;
    c[2] = u64::from(vintid) | (doorbell.field()? << 32);
    Ok(c)
}

/// VMAPI: VMAPTI with vINTID = EventID, so the EventID must itself be an LPI.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID, DW1 [47:32] vPEID; DW2 [63:32] Doorbell.
pub fn vmapi(
    device_id: u32,
    event_id: u32,
    vpeid: u16,
    doorbell: Doorbell,
) -> Result<Command, ItsError> {
    check_lpi("VMAPI EventID (used as vINTID)", event_id)?;
    let mut c = device_event(cmd::VMAPI, device_id, event_id);
    c[1] |= u64::from(vpeid) << VPEID_SHIFT;
    c[2] = doorbell.field()? << 32;
    Ok(c)
}

/// VMOVP (GICv4.0): move vPE `vpeid` to another redistributor.
///
/// DW0 [47:32] SequenceNumber, DW1 [15:0] ITSList (both used only when GITS_TYPER.VMOVP = 0,
/// to synchronise several ITSs; QEMU reports VMOVP = 1 and ignores them); DW1 [47:32] vPEID;
/// DW2 [51:16] RDbase (QEMU `VMOVP_0/1/2`; DW2 [63] and DW3 are GICv4.1 fields, left 0).
pub fn vmovp(
    vpeid: u16,
    target: RdBase,
    sequence_number: u16,
    its_list: u16,
) -> Result<Command, ItsError> {
    Ok(command(
        cmd::VMOVP,
        u64::from(sequence_number) << 32,
        (u64::from(vpeid) << VPEID_SHIFT) | u64::from(its_list),
        target.field()?,
        0,
    ))
}

/// VMOVI: move the vLPI of (DeviceID, EventID) to vPE `vpeid`, optionally changing its doorbell.
///
/// DW0 [63:32] DeviceID; DW1 [31:0] EventID, DW1 [47:32] vPEID; DW2 [0] D (doorbell valid),
/// DW2 [63:32] Doorbell (QEMU `VMOVI_0/1/2`).
pub fn vmovi(
    device_id: u32,
    event_id: u32,
    vpeid: u16,
    doorbell: Option<Doorbell>,
) -> Result<Command, ItsError> {
    let mut c = device_event(cmd::VMOVI, device_id, event_id);
    c[1] |= u64::from(vpeid) << VPEID_SHIFT;
    if let Some(db) = doorbell {
        c[2] = 1 | (db.field()? << 32);
    }
    Ok(c)
}

/// VSYNC: wait until every earlier effect on vPE `vpeid` is visible. DW1 [47:32] vPEID.
pub fn vsync(vpeid: u16) -> Command {
    command(cmd::VSYNC, 0, u64::from(vpeid) << VPEID_SHIFT, 0, 0)
}

/// VINVALL: re-read the configuration of every vLPI of vPE `vpeid`. DW1 [47:32] vPEID
/// (QEMU `VINVALL_1.VPEID`).
pub fn vinvall(vpeid: u16) -> Command {
    command(cmd::VINVALL, 0, u64::from(vpeid) << VPEID_SHIFT, 0, 0)
}

// ---------------------------------------------------------------------------------------------
// GITS_TYPER (IHI 0069 GITS_TYPER; QEMU `FIELD(GITS_TYPER, ...)`, Linux `GITS_TYPER_*`).

/// The ITS features the hypervisor looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Typer {
    /// [0] Physical: physical LPIs supported.
    pub physical: bool,
    /// [1] Virtual: GICv4 virtual LPIs and the V* commands supported.
    pub virtual_lpis: bool,
    /// [2] CCT: cumulative collection tables.
    pub cct: bool,
    /// [7:4] ITT_entry_size + 1: bytes of one ITT entry.
    pub itt_entry_bytes: u32,
    /// [12:8] ID_bits + 1: EventID bits.
    pub event_id_bits: u32,
    /// [17:13] Devbits + 1: DeviceID bits.
    pub device_id_bits: u32,
    /// [18] SEIS: SErrors generated for command errors.
    pub seis: bool,
    /// [19] PTA: RDbase is a physical address (1) or a processor number (0).
    pub pta: bool,
    /// [31:24] HCC: collections held in the ITS without a table in memory.
    pub hcc: u32,
    /// [35:32] CIDbits + 1 when [36] CIL is set, otherwise 16: collection ID bits.
    pub collection_id_bits: u32,
    /// [37] VMOVP: VMOVP needs no SequenceNumber/ITSList synchronisation.
    pub vmovp_single: bool,
    /// [40] VMAPP: GICv4.1 (VMAPP/VMOVP/VPENDBASER in their 4.1 layouts). This module encodes
    /// GICv4.0 only.
    pub gicv41: bool,
}

impl Typer {
    /// Decodes a GITS_TYPER value.
    pub const fn decode(v: u64) -> Typer {
        let cil = v & (1 << 36) != 0;
        Typer {
            physical: v & 1 != 0,
            virtual_lpis: v & (1 << 1) != 0,
            cct: v & (1 << 2) != 0,
            itt_entry_bytes: ((v >> 4) & 0xf) as u32 + 1,
            event_id_bits: ((v >> 8) & 0x1f) as u32 + 1,
            device_id_bits: ((v >> 13) & 0x1f) as u32 + 1,
            seis: v & (1 << 18) != 0,
            pta: v & (1 << 19) != 0,
            hcc: ((v >> 24) & 0xff) as u32,
            collection_id_bits: if cil {
                ((v >> 32) & 0xf) as u32 + 1
            } else {
                16
            },
            vmovp_single: v & (1 << 37) != 0,
            gicv41: v & (1 << 40) != 0,
        }
    }

    /// Whether this ITS can do GICv4.0 direct injection as this module encodes it.
    pub const fn direct_injection(&self) -> bool {
        self.physical && self.virtual_lpis && !self.gicv41
    }

    /// The RDbase operand for the redistributor with this processor number and RD_base
    /// address, in the form GITS_TYPER.PTA asks for.
    pub fn rdbase(&self, processor_number: u64, rd_base: u64) -> Result<RdBase, ItsError> {
        if self.pta {
            check_addr("redistributor address", rd_base, SZ_64K)?;
            Ok(RdBase::Address(rd_base))
        } else {
            u16::try_from(processor_number)
                .map(RdBase::ProcessorNumber)
                .map_err(|_| ItsError::ProcessorNumber(processor_number))
        }
    }

    /// Checks a DeviceID against Devbits.
    pub fn check_device_id(&self, device_id: u32) -> Result<u32, ItsError> {
        check_fits("DeviceID", u64::from(device_id), self.device_id_bits)?;
        Ok(device_id)
    }

    /// Checks a collection ID against CIDbits.
    pub fn check_collection(&self, icid: u16) -> Result<u16, ItsError> {
        check_fits("ICID", u64::from(icid), self.collection_id_bits)?;
        Ok(icid)
    }

    /// The ITT a device with `events` events (EventIDs 0..events) needs on this ITS.
    pub fn itt_for(&self, events: u32) -> Result<IttLayout, ItsError> {
        IttLayout::new(events, self.itt_entry_bytes, self.event_id_bits)
    }
}

fn check_fits(what: &'static str, value: u64, bits: u32) -> Result<(), ItsError> {
    if bits < 64 && value >> bits != 0 {
        return Err(ItsError::IdTooLarge { what, value, bits });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Interrupt Translation Tables.

/// ITT_addr holds bits [51:8]: an ITT is 256-byte aligned.
pub const ITT_ALIGN: u64 = 256;

/// Size and MAPD operands of a device's ITT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IttLayout {
    /// EventID bits (MAPD Size + 1): at least 1, since Size = 0 already covers two events.
    pub event_id_bits: u32,
    /// Bytes to allocate: 2^event_id_bits entries of GITS_TYPER.ITT_entry_size + 1 bytes.
    pub bytes: u64,
}

impl IttLayout {
    /// The ITT of a device with `events` events, given the ITS's entry size and EventID bits.
    pub fn new(events: u32, entry_bytes: u32, max_event_id_bits: u32) -> Result<Self, ItsError> {
        if events == 0 {
            return Err(ItsError::NoEvents);
        }
        // ceil(log2(events)), and never 0: Size is EventID bits minus one.
        let bits = (u32::BITS - (events - 1).leading_zeros()).max(1);
        if bits > max_event_id_bits {
            return Err(ItsError::IdTooLarge {
                what: "EventID",
                value: u64::from(events - 1),
                bits: max_event_id_bits,
            });
        }
        Ok(IttLayout {
            event_id_bits: bits,
            bytes: (1u64 << bits) * u64::from(entry_bytes),
        })
    }

    /// The MAPD operand for this ITT at `itt_addr`.
    pub fn mapping(&self, itt_addr: u64) -> IttMapping {
        IttMapping {
            itt_addr,
            event_id_bits: self.event_id_bits,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GITS_BASER<n> (IHI 0069 GITS_BASER<n>; QEMU `FIELD(GITS_BASER, ...)`): Size [7:0] pages - 1,
// Page_Size [9:8], Shareability [11:10], Physical_Address [47:12] (with 64 KiB pages [47:16]
// and bits [51:48] in [15:12]), Entry_Size [52:48] bytes - 1 (read-only), OuterCache [55:53],
// Type [58:56] (read-only), InnerCache [61:59], Indirect [62], Valid [63].

/// GITS_BASER<n>.Type (QEMU `GITS_BASER_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableType {
    /// 0b000: no table behind this register.
    Unimplemented,
    /// 0b001: the device table, indexed by DeviceID.
    Device,
    /// 0b010: the vPE table, indexed by vPEID (GICv4).
    Vpe,
    /// 0b100: the collection table, indexed by ICID.
    Collection,
    /// Any other value (reserved).
    Reserved(u8),
}

impl TableType {
    const fn from_field(f: u8) -> TableType {
        match f {
            0b000 => TableType::Unimplemented,
            0b001 => TableType::Device,
            0b010 => TableType::Vpe,
            0b100 => TableType::Collection,
            other => TableType::Reserved(other),
        }
    }

    const fn field(self) -> u8 {
        match self {
            TableType::Unimplemented => 0b000,
            TableType::Device => 0b001,
            TableType::Vpe => 0b010,
            TableType::Collection => 0b100,
            TableType::Reserved(f) => f,
        }
    }
}

/// GITS_BASER<n>.Page_Size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 0b00.
    Size4K,
    /// 0b01.
    Size16K,
    /// 0b10 (0b11 is reserved and treated as 64 KiB by QEMU).
    Size64K,
}

impl PageSize {
    /// Bytes in one page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 0x1000,
            PageSize::Size16K => 0x4000,
            PageSize::Size64K => 0x1_0000,
        }
    }

    const fn field(self) -> u64 {
        match self {
            PageSize::Size4K => 0b00,
            PageSize::Size16K => 0b01,
            PageSize::Size64K => 0b10,
        }
    }

    const fn from_field(f: u64) -> PageSize {
        match f & 0b11 {
            0b00 => PageSize::Size4K,
            0b01 => PageSize::Size16K,
            _ => PageSize::Size64K,
        }
    }
}

const BASER_ENTRY_SIZE_SHIFT: u32 = 48;
const BASER_TYPE_SHIFT: u32 = 56;
/// The read-only fields (QEMU `GITS_BASER_RO_MASK`): Entry_Size and Type.
const BASER_RO_MASK: u64 = (0x1f << BASER_ENTRY_SIZE_SHIFT) | (0b111 << BASER_TYPE_SHIFT);

/// A decoded GITS_BASER<n>.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baser {
    pub table_type: TableType,
    /// Entry_Size + 1: bytes of one table entry.
    pub entry_bytes: u32,
    pub page_size: PageSize,
    /// Size + 1: pages of the (level-1, if indirect) table.
    pub pages: u32,
    /// The table's physical address.
    pub addr: u64,
    pub indirect: bool,
    pub valid: bool,
}

impl Baser {
    /// Decodes a GITS_BASER<n> value.
    pub const fn decode(v: u64) -> Baser {
        let page_size = PageSize::from_field((v >> 8) & 0b11);
        let addr = match page_size {
            // Physical_Address [47:16] are address bits [47:16], [15:12] are bits [51:48]
            // (QEMU `PHYADDRL_64K`, `PHYADDRH_64K`).
            PageSize::Size64K => (v & 0x0000_ffff_ffff_0000) | (((v >> 12) & 0xf) << 48),
            _ => v & 0x0000_ffff_ffff_f000,
        };
        Baser {
            table_type: TableType::from_field(((v >> BASER_TYPE_SHIFT) & 0b111) as u8),
            entry_bytes: ((v >> BASER_ENTRY_SIZE_SHIFT) & 0x1f) as u32 + 1,
            page_size,
            pages: (v & 0xff) as u32 + 1,
            addr,
            indirect: v & (1 << 62) != 0,
            valid: v & (1 << 63) != 0,
        }
    }

    /// Pages of `page_size` for a flat table of `entries` entries of this register's size.
    pub fn flat_pages(&self, entries: u64, page_size: PageSize) -> Result<u64, ItsError> {
        let bytes = entries.saturating_mul(u64::from(self.entry_bytes));
        let pages = bytes.div_ceil(page_size.bytes()).max(1);
        size_field(pages)?;
        Ok(pages)
    }
}

/// The value to program into a GITS_BASER<n> whose reset value is `current`, for a flat
/// (not indirect) table of `pages` pages of `page_size` at `addr`. Keeps the read-only Type and
/// Entry_Size, and refuses a register whose table type is not `expected`.
pub fn baser_value(
    current: u64,
    expected: TableType,
    addr: u64,
    pages: u64,
    page_size: PageSize,
) -> Result<u64, ItsError> {
    let found = Baser::decode(current).table_type;
    if found != expected {
        return Err(ItsError::WrongTableType {
            expected: expected.field(),
            found: found.field(),
        });
    }
    let addr = check_addr("ITS table", addr, page_size.bytes())?;
    let addr_field = match page_size {
        PageSize::Size64K => (addr & 0x0000_ffff_ffff_0000) | ((addr >> 48) << 12),
        _ => addr,
    };
    Ok((current & BASER_RO_MASK)
        | (1 << 63)
        | (CACHE_RAWAWB << 59)
        | addr_field
        | (SHARE_INNER << 10)
        | (page_size.field() << 8)
        | size_field(pages)?)
}

// ---------------------------------------------------------------------------------------------
// The command queue (GITS_CBASER: Size [7:0] 4 KiB pages - 1, Shareability [11:10],
// Physical_Address [51:12], OuterCache [55:53], InnerCache [61:59], Valid [63]; GITS_CWRITER and
// GITS_CREADR: Offset [19:5] in bytes, CWRITER.Retry [0], CREADR.Stalled [0]; QEMU
// `FIELD(GITS_CBASER/CWRITER/CREADR, ...)`).

/// A command queue of 1..=256 4 KiB pages, as slots of 32 bytes numbered 0..slots(); the
/// registers hold byte offsets (slot * 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandQueue {
    slots: u64,
}

/// GITS_CREADR.Stalled: the ITS stopped at a command it could not execute.
pub const CREADR_STALLED: u64 = 1 << 0;
const QUEUE_OFFSET_MASK: u64 = 0x7fff << 5;

impl CommandQueue {
    /// A queue of `pages` 4 KiB pages (1..=256).
    pub fn new(pages: u64) -> Result<Self, ItsError> {
        size_field(pages)?;
        Ok(CommandQueue {
            slots: pages * SZ_4K / COMMAND_BYTES,
        })
    }

    /// Number of slots; one is always left empty, so at most `slots() - 1` commands are queued.
    pub const fn slots(&self) -> u64 {
        self.slots
    }

    /// The GITS_CBASER value for this queue at `addr`. Physical_Address is [51:12], but the
    /// queue is required to be 64 KiB-aligned here, as Linux allocates it (ITS_CMD_QUEUE_SZ),
    /// so no reading of the alignment rules for larger queues can bite; QEMU takes any 4 KiB.
    pub fn cbaser(&self, addr: u64) -> Result<u64, ItsError> {
        let addr = check_addr("command queue", addr, SZ_64K)?;
        let pages = self.slots * COMMAND_BYTES / SZ_4K;
        Ok((1 << 63) | (CACHE_RAWAWB << 59) | addr | (SHARE_INNER << 10) | (pages - 1))
    }

    /// The slot after `slot`, wrapping.
    pub const fn next(&self, slot: u64) -> u64 {
        (slot + 1) % self.slots
    }

    /// Nothing queued: the ITS has read up to where software wrote.
    pub const fn is_empty(&self, write: u64, read: u64) -> bool {
        write == read
    }

    /// No room: writing one more would make CWRITER equal CREADR, which reads as empty
    /// (Linux `its_queue_full`: `(widx + 1) % entries == ridx`).
    pub const fn is_full(&self, write: u64, read: u64) -> bool {
        self.next(write) == read
    }

    /// Commands queued and not yet consumed.
    pub const fn queued(&self, write: u64, read: u64) -> u64 {
        (write + self.slots - read) % self.slots
    }

    /// Commands that can still be written.
    pub const fn free(&self, write: u64, read: u64) -> u64 {
        self.slots - 1 - self.queued(write, read)
    }

    /// Claims the slot at `write`: its byte offset in the queue and the next write slot; or
    /// [`ItsError::QueueFull`].
    pub fn claim(&self, write: u64, read: u64) -> Result<(u64, u64), ItsError> {
        self.check_slot(write)?;
        self.check_slot(read)?;
        if self.is_full(write, read) {
            return Err(ItsError::QueueFull);
        }
        Ok((write * COMMAND_BYTES, self.next(write)))
    }

    /// The GITS_CWRITER value that publishes everything before slot `write`.
    pub fn cwriter(&self, write: u64) -> Result<u64, ItsError> {
        self.check_slot(write)?;
        Ok(write * COMMAND_BYTES)
    }

    /// Decodes GITS_CREADR into (slot, stalled), refusing an offset outside this queue (a
    /// value read from the device is checked before it indexes anything).
    pub fn creadr(&self, v: u64) -> Result<(u64, bool), ItsError> {
        let offset = v & QUEUE_OFFSET_MASK;
        let slot = offset / COMMAND_BYTES;
        self.check_slot(slot)
            .map_err(|_| ItsError::QueueOffset(v))?;
        Ok((slot, v & CREADR_STALLED != 0))
    }

    fn check_slot(&self, slot: u64) -> Result<(), ItsError> {
        if slot >= self.slots {
            return Err(ItsError::QueueOffset(slot * COMMAND_BYTES));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The GICv4.0 redistributor's vLPI registers (IHI 0069 GICR_VPROPBASER/GICR_VPENDBASER, the
// GICv4.0 layouts; QEMU `FIELD(GICR_VPROPBASER/GICR_VPENDBASER, ...)`).

/// Bytes of a vLPI configuration table for `vintid_bits` ID bits: one byte per LPI, LPIs
/// starting at 8192.
pub fn lpi_config_table_bytes(vintid_bits: u32) -> Result<u64, ItsError> {
    let bits = check_id_bits("LPI configuration table", vintid_bits, MIN_LPI_ID_BITS, 32)?;
    Ok((1u64 << bits) - u64::from(LPI_INTID_BASE))
}

/// Bytes of a (virtual) LPI pending table for `vintid_bits` ID bits: one bit per INTID from 0
/// (the first 1 KiB covers the non-LPI INTIDs and is IMPLEMENTATION DEFINED scratch).
pub fn pending_table_bytes(vintid_bits: u32) -> Result<u64, ItsError> {
    let bits = check_id_bits("pending table", vintid_bits, MIN_LPI_ID_BITS, 32)?;
    Ok((1u64 << bits) / 8)
}

/// One byte of an LPI configuration table: Priority [7:2], bit 1 RES1 (Linux `LPI_PROP_GROUP1`),
/// Enable [0] (QEMU `LPI_PRIORITY_MASK`, `LPI_CTE_ENABLED`).
pub fn lpi_config_byte(priority: u8, enabled: bool) -> Result<u8, ItsError> {
    if priority & 0b11 != 0 {
        return Err(ItsError::Priority(priority));
    }
    Ok(priority | 0b10 | u8::from(enabled))
}

/// GICR_VPROPBASER (GICv4.0) for a vLPI configuration table at `addr` (4 KiB-aligned) covering
/// `vintid_bits` ID bits: IDbits [4:0] = bits - 1, InnerCache [9:7], Shareability [11:10],
/// Physical_Address [51:12], OuterCache [58:56] (0: same as inner).
pub fn vpropbaser(addr: u64, vintid_bits: u32) -> Result<u64, ItsError> {
    let bits = check_id_bits("GICR_VPROPBASER", vintid_bits, MIN_LPI_ID_BITS, 32)?;
    let addr = check_addr("vLPI configuration table", addr, SZ_4K)?;
    Ok(addr | (SHARE_INNER << 10) | (CACHE_RAWAWB << 7) | u64::from(bits - 1))
}

/// GICR_VPENDBASER.Valid [63]: the vPE is resident on this redistributor.
pub const VPENDBASER_VALID: u64 = 1 << 63;
/// GICR_VPENDBASER.IDAI [62]: the IMPLEMENTATION DEFINED area of the table is not to be trusted.
pub const VPENDBASER_IDAI: u64 = 1 << 62;
/// GICR_VPENDBASER.PendingLast [61]: read after clearing Valid, a vLPI was pending when the vPE
/// left (RES1 on the transition to Valid).
pub const VPENDBASER_PENDING_LAST: u64 = 1 << 61;
/// GICR_VPENDBASER.Dirty [60]: the redistributor is still writing out the previous vPE's
/// state (QEMU never sets it).
pub const VPENDBASER_DIRTY: u64 = 1 << 60;
const VPENDBASER_ADDR_MASK: u64 = 0x000f_ffff_ffff_0000;

/// GICR_VPENDBASER (GICv4.0) for the virtual pending table at `vpt_addr` (64 KiB-aligned:
/// Physical_Address is [51:16]), with Valid as given; InnerCache [9:7], Shareability [11:10],
/// OuterCache [58:56] = 0 (same as inner), IDAI = 0 (the table was zeroed or written by this GIC).
///
/// QEMU ignores a write that keeps Valid = 1 but changes anything (UNPREDICTABLE in the
/// architecture), and a 32-bit write to either half acts on the whole register: write the
/// 64-bit value, clearing Valid before changing the address.
pub fn vpendbaser(vpt_addr: u64, valid: bool) -> Result<u64, ItsError> {
    let addr = check_addr("virtual pending table", vpt_addr, SZ_64K)?;
    let v = if valid { VPENDBASER_VALID } else { 0 };
    Ok(v | addr | (SHARE_INNER << 10) | (CACHE_RAWAWB << 7))
}

/// A GICR_VPENDBASER value read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpendbaser {
    pub valid: bool,
    pub idai: bool,
    pub pending_last: bool,
    pub dirty: bool,
    /// The virtual pending table address.
    pub addr: u64,
}

impl Vpendbaser {
    /// Decodes a GICR_VPENDBASER value.
    pub const fn decode(v: u64) -> Vpendbaser {
        Vpendbaser {
            valid: v & VPENDBASER_VALID != 0,
            idai: v & VPENDBASER_IDAI != 0,
            pending_last: v & VPENDBASER_PENDING_LAST != 0,
            dirty: v & VPENDBASER_DIRTY != 0,
            addr: v & VPENDBASER_ADDR_MASK,
        }
    }
}

pub mod bringup;
pub mod msi;
pub mod vpe;

#[cfg(test)]
mod tests;
