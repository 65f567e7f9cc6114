//! Arm SMMUv3: register map, Stream Table Entry and command encodings, queue index arithmetic and
//! event record decoding.
//!
//! This module owns the bit-level knowledge of the SMMUv3 programming interface that the driver in
//! `arch/smmu.rs` uses. It never touches the device: everything here turns plain values into other
//! plain values, so every encoding is unit-tested on the host against the bit positions of the
//! architecture (Arm IHI 0070), cross-checked against Linux's `arm-smmu-v3.h` and QEMU's
//! `hw/arm/smmuv3-internal.h`.
//!
//! The hypervisor uses the SMMU in one way only: a linear stream table in which every entry aborts,
//! except the streams of passed-through devices, which translate with stage 2 only, through the
//! owning VM's own stage-2 table (IOVA = guest-physical address) and VMID. Nothing ever bypasses:
//! GBPA aborts while the SMMU is disabled, and stream IDs beyond the table are aborted by the SMMU.

use core::fmt;

use crate::mm::stage2;

// ---------------------------------------------------------------------------------------------
// Registers (offsets from the SMMU base). Page 0 holds everything but the event and PRI queue
// indices, which live in page 1 (base + 64 KiB). QEMU aliases page 1 onto page 0, real SMMUs do
// not, so the page-1 offsets below are the architectural ones.

/// SMMU_IDR0: features (stages, table formats, stream table levels, VMID16, coherency).
pub const IDR0: usize = 0x00;
/// SMMU_IDR1: queue and stream ID sizes.
pub const IDR1: usize = 0x04;
/// SMMU_IDR5: output address size and granules.
pub const IDR5: usize = 0x14;
/// SMMU_CR0: enables (SMMUEN, queues).
pub const CR0: usize = 0x20;
/// SMMU_CR0ACK: reflects CR0 once the SMMU has acted on it.
pub const CR0ACK: usize = 0x24;
/// SMMU_CR1: cacheability and shareability of table and queue accesses.
pub const CR1: usize = 0x28;
/// SMMU_CR2: PTM, RECINVSID, E2H.
pub const CR2: usize = 0x2c;
/// SMMU_GBPA: what happens to transactions while SMMUEN is 0.
pub const GBPA: usize = 0x44;
/// SMMU_IRQ_CTRL: wired interrupt enables.
pub const IRQ_CTRL: usize = 0x50;
/// SMMU_IRQ_CTRLACK.
pub const IRQ_CTRLACK: usize = 0x54;
/// SMMU_GERROR: global errors; an error is active while its bit differs from GERRORN.
pub const GERROR: usize = 0x60;
/// SMMU_GERRORN: software acknowledges a global error by toggling its bit here.
pub const GERRORN: usize = 0x64;
/// SMMU_STRTAB_BASE (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// SMMU_STRTAB_BASE_CFG.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// SMMU_CMDQ_BASE (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// SMMU_CMDQ_PROD: written by software.
pub const CMDQ_PROD: usize = 0x98;
/// SMMU_CMDQ_CONS: advanced by the SMMU; bits [30:24] hold the error of a stopped queue.
pub const CMDQ_CONS: usize = 0x9c;
/// SMMU_EVENTQ_BASE (64-bit).
pub const EVTQ_BASE: usize = 0xa0;
/// SMMU_EVENTQ_PROD, in page 1: advanced by the SMMU.
pub const EVTQ_PROD: usize = 0x1_00a8;
/// SMMU_EVENTQ_CONS, in page 1: written by software.
pub const EVTQ_CONS: usize = 0x1_00ac;
/// Size of the register space the driver touches (two 64 KiB pages).
pub const REGISTER_SPACE: usize = 0x2_0000;

// IDR0 fields.
/// IDR0.S2P: stage-2 translation supported.
pub const IDR0_S2P: u32 = 1 << 0;
/// IDR0.S1P: stage-1 translation supported.
pub const IDR0_S1P: u32 = 1 << 1;
/// IDR0.TTF, bits [3:2]: translation table formats (0b10 AArch64, 0b11 both).
pub const IDR0_TTF_SHIFT: u32 = 2;
/// IDR0.COHACC: table, queue and DMA accesses are IO-coherent.
pub const IDR0_COHACC: u32 = 1 << 4;
/// IDR0.HYP: EL2 stage-1 supported (irrelevant here, decoded for logging).
pub const IDR0_HYP: u32 = 1 << 9;
/// IDR0.VMID16: 16-bit VMIDs.
pub const IDR0_VMID16: u32 = 1 << 18;
/// IDR0.TTENDIAN, bits [22:21]: 0b00 mixed, 0b10 little, 0b11 big endian tables.
pub const IDR0_TTENDIAN_SHIFT: u32 = 21;
/// IDR0.ST_LEVEL, bits [28:27]: 0b00 linear only, 0b01 linear and two-level.
pub const IDR0_ST_LEVEL_SHIFT: u32 = 27;

// IDR1 fields.
/// IDR1.SIDSIZE, bits [5:0]: stream ID width.
pub const IDR1_SIDSIZE_MASK: u32 = 0x3f;
/// IDR1.EVENTQS, bits [20:16]: log2 of the largest event queue.
pub const IDR1_EVENTQS_SHIFT: u32 = 16;
/// IDR1.CMDQS, bits [25:21]: log2 of the largest command queue.
pub const IDR1_CMDQS_SHIFT: u32 = 21;
/// IDR1.ATTR_TYPES_OVR: STE.SHCFG and friends override incoming attributes.
pub const IDR1_ATTR_TYPES_OVR: u32 = 1 << 27;

// IDR5 fields.
/// IDR5.OAS, bits [2:0]: output address size, PARange encoding.
pub const IDR5_OAS_MASK: u32 = 0b111;
/// IDR5.GRAN4K: 4 KiB translation granule supported.
pub const IDR5_GRAN4K: u32 = 1 << 4;

// CR0 fields (CR0ACK has the same layout).
/// CR0.SMMUEN: translation on.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.EVENTQEN.
pub const CR0_EVTQEN: u32 = 1 << 2;
/// CR0.CMDQEN.
pub const CR0_CMDQEN: u32 = 1 << 3;

// CR1 fields: QUEUE_IC [1:0], QUEUE_OC [3:2], QUEUE_SH [5:4], TABLE_IC [7:6], TABLE_OC [9:8],
// TABLE_SH [11:10]. Cacheability here is 0 non-cacheable, 1 write-back, 2 write-through (not the
// TCR encoding).
/// CR1 for write-back cacheable, inner-shareable tables and queues: matches how the hypervisor's
/// own RAM is mapped, which is only correct because the SMMU must be IO-coherent (IDR0.COHACC).
pub const CR1_WB_ISH: u32 = 1 | (1 << 2) | (0b11 << 4) | (1 << 6) | (1 << 8) | (0b11 << 10);

// CR2 fields.
/// CR2.RECINVSID: record C_BAD_STREAMID events for stream IDs beyond the table.
pub const CR2_RECINVSID: u32 = 1 << 1;
/// CR2.PTM: private TLB maintenance (ignore broadcast TLBI from the CPUs). The hypervisor
/// invalidates SMMU TLBs with commands, so it does not depend on broadcast maintenance reaching
/// the SMMU (which also needs IDR0.BTM).
pub const CR2_PTM: u32 = 1 << 2;

// GBPA fields.
/// GBPA.UPDATE: set with a write; the SMMU clears it when the new value is in effect.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// GBPA.ABORT: abort incoming transactions while SMMUEN is 0 (instead of bypassing).
pub const GBPA_ABORT: u32 = 1 << 20;

// IRQ_CTRL fields.
/// IRQ_CTRL.GERROR_IRQEN.
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// IRQ_CTRL.EVENTQ_IRQEN.
pub const IRQ_CTRL_EVTQ_IRQEN: u32 = 1 << 2;

// GERROR bits.
/// GERROR.CMDQ_ERR: the command queue stopped on an error (CMDQ_CONS.ERR says which).
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR.EVENTQ_ABT_ERR: an event record write aborted.
pub const GERROR_EVTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR.PRIQ_ABT_ERR.
pub const GERROR_PRIQ_ABT_ERR: u32 = 1 << 3;
/// GERROR.MSI_CMDQ_ABT_ERR.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// GERROR.MSI_EVENTQ_ABT_ERR.
pub const GERROR_MSI_EVTQ_ABT_ERR: u32 = 1 << 5;
/// GERROR.MSI_PRIQ_ABT_ERR.
pub const GERROR_MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
/// GERROR.MSI_GERROR_ABT_ERR.
pub const GERROR_MSI_GERROR_ABT_ERR: u32 = 1 << 7;
/// GERROR.SFM_ERR: the SMMU entered service failure mode.
pub const GERROR_SFM_ERR: u32 = 1 << 8;
/// Every architected GERROR bit.
pub const GERROR_MASK: u32 = 0x1fd;

// Base register encodings.
/// STRTAB_BASE/CMDQ_BASE/EVTQ_BASE bit 62: read-allocate hint (RA / RWA).
pub const BASE_RA: u64 = 1 << 62;
/// STRTAB_BASE.ADDR, bits [51:6].
pub const STRTAB_BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x3f;
/// STRTAB_BASE_CFG.FMT, bits [17:16]: 0b00 linear.
pub const STRTAB_BASE_CFG_FMT_SHIFT: u32 = 16;
/// Queue base ADDR, bits [51:5].
pub const Q_BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1f;
/// Queue base LOG2SIZE, bits [4:0].
pub const Q_BASE_LOG2SIZE_MASK: u64 = 0x1f;

/// CMDQ_CONS.ERR, bits [30:24].
pub const CMDQ_CONS_ERR_SHIFT: u32 = 24;
/// Bit 31 of EVTQ_PROD (OVFLG) and EVTQ_CONS (OVACKFLG): event queue overflow flag and its ack.
pub const Q_OVERFLOW_FLAG: u32 = 1 << 31;

/// Bytes in a Stream Table Entry.
pub const STE_BYTES: usize = 64;
/// Bytes in a command.
pub const CMD_BYTES: usize = 16;
/// Bytes in an event record.
pub const EVENT_BYTES: usize = 32;
/// Largest queue the architecture allows (LOG2SIZE is 5 bits, IDR1.CMDQS/EVENTQS cap at 19).
pub const MAX_QUEUE_LOG2: u8 = 19;

/// Linear stream table base register value.
pub const fn strtab_base(pa: u64) -> u64 {
    BASE_RA | (pa & STRTAB_BASE_ADDR_MASK)
}

/// STRTAB_BASE_CFG for a linear table of 2^`log2size` entries.
pub const fn strtab_base_cfg_linear(log2size: u8) -> u32 {
    (log2size as u32 & 0x3f) | (0b00 << STRTAB_BASE_CFG_FMT_SHIFT)
}

/// CMDQ_BASE / EVTQ_BASE value for a queue of 2^`log2size` entries at `pa`.
pub const fn queue_base(pa: u64, log2size: u8) -> u64 {
    BASE_RA | (pa & Q_BASE_ADDR_MASK) | (log2size as u64 & Q_BASE_LOG2SIZE_MASK)
}

/// Stream-ID width needed for stream IDs `0..=max_sid` (at least 1 bit).
pub const fn sid_bits_for(max_sid: u32) -> u8 {
    let bits = 32 - max_sid.leading_zeros();
    if bits == 0 {
        1
    } else {
        bits as u8
    }
}

/// Address width of a PARange/OAS field value (0b000 = 32 bits ... 0b110 = 52 bits).
pub const fn pa_bits(field: u8) -> u32 {
    match field {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

// ---------------------------------------------------------------------------------------------
// Features.

/// What the SMMU says it can do (IDR0, IDR1, IDR5), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub stage1: bool,
    pub stage2: bool,
    /// AArch64 translation tables (IDR0.TTF is 0b10 or 0b11).
    pub aarch64_tables: bool,
    /// Tables and queues are accessed coherently (IDR0.COHACC).
    pub coherent: bool,
    pub vmid16: bool,
    /// Little-endian (or mixed) translation tables.
    pub little_endian: bool,
    /// A two-level stream table is available (linear is always available).
    pub two_level_strtab: bool,
    pub hyp: bool,
    /// IDR1.SIDSIZE.
    pub sid_bits: u8,
    /// IDR1.CMDQS, log2 of the largest command queue.
    pub cmdq_log2: u8,
    /// IDR1.EVENTQS, log2 of the largest event queue.
    pub evtq_log2: u8,
    pub attr_types_ovr: bool,
    /// IDR5.OAS (PARange encoding).
    pub oas_field: u8,
    pub gran4k: bool,
}

/// Why the SMMU cannot be used the way the hypervisor uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// No stage-2 translation (QEMU: add `-global arm-smmuv3.stage=2`).
    #[error("the SMMU has no stage-2 translation (QEMU: -global arm-smmuv3.stage=2)")]
    NoStage2,
    /// No AArch64 translation table format.
    #[error("the SMMU cannot walk AArch64 translation tables")]
    NoAarch64Tables,
    /// Not IO-coherent: the driver keeps tables and queues in write-back memory without cache
    /// maintenance, which is only correct for a coherent SMMU.
    #[error("the SMMU is not IO-coherent (IDR0.COHACC = 0)")]
    NotCoherent,
    /// Big-endian translation tables only.
    #[error("the SMMU walks big-endian tables only")]
    BigEndianOnly,
    /// No 4 KiB granule.
    #[error("the SMMU has no 4 KiB translation granule")]
    No4kGranule,
    /// OAS below the 40 bits our stage-2 IPA space needs (S2T0SZ = 24 requires IAS >= 40).
    #[error("the SMMU output address size is below 40 bits")]
    OutputTooSmall,
}

impl Features {
    /// Decodes the three ID registers.
    pub const fn decode(idr0: u32, idr1: u32, idr5: u32) -> Features {
        let ttf = (idr0 >> IDR0_TTF_SHIFT) & 0b11;
        let endian = (idr0 >> IDR0_TTENDIAN_SHIFT) & 0b11;
        Features {
            stage1: idr0 & IDR0_S1P != 0,
            stage2: idr0 & IDR0_S2P != 0,
            aarch64_tables: ttf & 0b10 != 0,
            coherent: idr0 & IDR0_COHACC != 0,
            vmid16: idr0 & IDR0_VMID16 != 0,
            little_endian: endian == 0b00 || endian == 0b10,
            two_level_strtab: (idr0 >> IDR0_ST_LEVEL_SHIFT) & 0b11 == 0b01,
            hyp: idr0 & IDR0_HYP != 0,
            sid_bits: (idr1 & IDR1_SIDSIZE_MASK) as u8,
            cmdq_log2: ((idr1 >> IDR1_CMDQS_SHIFT) & 0x1f) as u8,
            evtq_log2: ((idr1 >> IDR1_EVENTQS_SHIFT) & 0x1f) as u8,
            attr_types_ovr: idr1 & IDR1_ATTR_TYPES_OVR != 0,
            oas_field: (idr5 & IDR5_OAS_MASK) as u8,
            gran4k: idr5 & IDR5_GRAN4K != 0,
        }
    }

    /// Whether the hypervisor's way of using the SMMU works on this one.
    pub fn check_usable(&self) -> Result<(), Unsupported> {
        if !self.stage2 {
            return Err(Unsupported::NoStage2);
        }
        if !self.aarch64_tables {
            return Err(Unsupported::NoAarch64Tables);
        }
        if !self.coherent {
            return Err(Unsupported::NotCoherent);
        }
        if !self.little_endian {
            return Err(Unsupported::BigEndianOnly);
        }
        if !self.gran4k {
            return Err(Unsupported::No4kGranule);
        }
        if pa_bits(self.oas_field) < stage2::IPA_BITS {
            return Err(Unsupported::OutputTooSmall);
        }
        Ok(())
    }

    /// Largest VMID the SMMU can tag a stream with.
    pub fn max_vmid(&self) -> u16 {
        if self.vmid16 {
            u16::MAX
        } else {
            u8::MAX as u16
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream Table Entries.

/// A Stream Table Entry: eight little-endian doublewords. Word 0 holds V and Config, so it is the
/// word whose store makes a new configuration live (see `arch/smmu.rs`).
pub type Ste = [u64; 8];

/// STE.V, bit 0.
pub const STE0_V: u64 = 1 << 0;
/// STE.Config, bits [3:1].
pub const STE0_CONFIG_SHIFT: u32 = 1;
/// Config 0b000: abort every transaction, record no event.
pub const STE_CONFIG_ABORT: u64 = 0b000;
/// Config 0b100: bypass (never used by the hypervisor; decoded for completeness).
pub const STE_CONFIG_BYPASS: u64 = 0b100;
/// Config 0b110: stage 1 bypassed, stage 2 translates.
pub const STE_CONFIG_S2_TRANS: u64 = 0b110;
/// STE.SHCFG, bits [109:108] = word 1 bits [45:44]; 0b01 = use the incoming shareability.
pub const STE1_SHCFG_SHIFT: u32 = 44;
/// SHCFG value "use incoming".
pub const STE_SHCFG_INCOMING: u64 = 0b01;
/// STE.S2VMID, word 2 bits [15:0].
pub const STE2_S2VMID_MASK: u64 = 0xffff;
/// The VTCR-shaped block S2T0SZ..S2PS, word 2 bits [50:32]; the fields inside it sit where they
/// sit in VTCR_EL2 (T0SZ [5:0], SL0 [7:6], IR0 [9:8], OR0 [11:10], SH0 [13:12], TG [15:14],
/// PS [18:16]), with the same encodings.
pub const STE2_VTCR_SHIFT: u32 = 32;
/// Width mask of that block (19 bits).
pub const STE2_VTCR_MASK: u64 = (1 << 19) - 1;
/// STE.S2AA64, word 2 bit 51: AArch64 stage-2 tables.
pub const STE2_S2AA64: u64 = 1 << 51;
/// STE.S2ENDI, word 2 bit 52: big-endian tables (left 0).
pub const STE2_S2ENDI: u64 = 1 << 52;
/// STE.S2AFFD, word 2 bit 53: Access flag faults disabled (left 0: our descriptors set AF, so an
/// AF = 0 descriptor is a bug that should fault).
pub const STE2_S2AFFD: u64 = 1 << 53;
/// STE.S2PTW, word 2 bit 54: stage-1 table walks that land on Device memory fault.
pub const STE2_S2PTW: u64 = 1 << 54;
/// STE.S2S, word 2 bit 57: stall on faults (left 0; QEMU rejects it).
pub const STE2_S2S: u64 = 1 << 57;
/// STE.S2R, word 2 bit 58: record stage-2 faults in the event queue.
pub const STE2_S2R: u64 = 1 << 58;
/// STE.S2TTB, word 3 bits [51:4].
pub const STE3_S2TTB_MASK: u64 = ((1 << 52) - 1) & !0xf;

/// The entry of every stream the hypervisor has not given to a VM: valid, Config = abort, so DMA
/// is refused silently (no event; a V = 0 entry would abort too but log C_BAD_STE per access).
pub const fn ste_abort() -> Ste {
    [
        STE0_V | (STE_CONFIG_ABORT << STE0_CONFIG_SHIFT),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Config field of an STE, or None if it is not valid.
pub const fn ste_config(ste: &Ste) -> Option<u64> {
    if ste[0] & STE0_V == 0 {
        None
    } else {
        Some((ste[0] >> STE0_CONFIG_SHIFT) & 0b111)
    }
}

/// Why a stage-2 STE was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SteError {
    /// The VMID does not fit the SMMU's VMID width.
    #[error("the VMID is wider than the SMMU's VMIDs")]
    VmidTooWide,
    /// The stage-2 root table is not 4 KiB aligned.
    #[error("the stage-2 root table is not 4 KiB aligned")]
    RootUnaligned,
    /// The stage-2 root table lies beyond the SMMU's output address size.
    #[error("the stage-2 root table is beyond the SMMU's address size")]
    RootOutOfRange,
}

/// The STE that translates a stream with stage 2 only, through the VM's own stage-2 table:
/// VMID `vmid`, root table at `root_pa`, and the walk configuration of `vtcr` (the VTCR_EL2 value
/// the CPUs use, from [`stage2::vtcr_el2`]), so the SMMU and the CPUs walk the same tables the
/// same way. S2PS is `vtcr`'s PS capped at the SMMU's OAS (the CPU may have more PA bits).
///
/// Word 1 stays 0 (no ATS, no stall, no FWB) except SHCFG = "incoming" when the SMMU honours
/// attribute overrides, so the device's own shareability is kept.
pub fn ste_stage2(
    features: &Features,
    vmid: u16,
    root_pa: u64,
    vtcr: u64,
) -> Result<Ste, SteError> {
    if vmid > features.max_vmid() {
        return Err(SteError::VmidTooWide);
    }
    if !root_pa.is_multiple_of(stage2::PAGE_SIZE) {
        return Err(SteError::RootUnaligned);
    }
    let oas_bits = pa_bits(features.oas_field).min(stage2::PA_BITS);
    if root_pa >> oas_bits != 0 {
        return Err(SteError::RootOutOfRange);
    }
    let ps_shift = stage2::VTCR_PS_SHIFT;
    let vtcr_ps = (vtcr >> ps_shift) & 0b111;
    let s2ps = vtcr_ps.min(features.oas_field as u64);
    let s2vtcr = (vtcr & STE2_VTCR_MASK & !(0b111 << ps_shift)) | (s2ps << ps_shift);
    let word1 = if features.attr_types_ovr {
        STE_SHCFG_INCOMING << STE1_SHCFG_SHIFT
    } else {
        0
    };
    // S2PTW only matters for stage-1 table walks, which a stage-2-only stream never makes; it is
    // set (as Linux does) so that a later nested configuration cannot walk into MMIO.
    let word2 = (vmid as u64 & STE2_S2VMID_MASK)
        | (s2vtcr << STE2_VTCR_SHIFT)
        | STE2_S2AA64
        | STE2_S2PTW
        | STE2_S2R;
    Ok([
        STE0_V | (STE_CONFIG_S2_TRANS << STE0_CONFIG_SHIFT),
        word1,
        word2,
        root_pa & STE3_S2TTB_MASK,
        0,
        0,
        0,
        0,
    ])
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// A command-queue entry: two little-endian doublewords, opcode in bits [7:0] of the first.
pub type Command = [u64; 2];

/// CMD_CFGI_STE: invalidate the cached STE of one stream.
pub const OP_CFGI_STE: u8 = 0x03;
/// CMD_CFGI_ALL (the encoding of CMD_CFGI_STE_RANGE with Range = 31): every cached STE.
pub const OP_CFGI_ALL: u8 = 0x04;
/// CMD_TLBI_NH_ALL (illegal on an SMMU without stage 1, as QEMU's stage=2 is; never sent).
pub const OP_TLBI_NH_ALL: u8 = 0x10;
/// CMD_TLBI_EL2_ALL.
pub const OP_TLBI_EL2_ALL: u8 = 0x20;
/// CMD_TLBI_S12_VMALL: every TLB entry of one VMID.
pub const OP_TLBI_S12_VMALL: u8 = 0x28;
/// CMD_TLBI_S2_IPA: stage-2 entries of one VMID covering one IPA.
pub const OP_TLBI_S2_IPA: u8 = 0x2a;
/// CMD_TLBI_NSNH_ALL: every non-secure, non-hypervisor TLB entry.
pub const OP_TLBI_NSNH_ALL: u8 = 0x30;
/// CMD_SYNC: completes when every earlier command has completed.
pub const OP_CMD_SYNC: u8 = 0x46;

/// Word 0 bits [63:32]: StreamID (CFGI_STE).
pub const CMD0_SID_SHIFT: u32 = 32;
/// Word 0 bits [47:32]: VMID (TLBI_S12_VMALL, TLBI_S2_IPA).
pub const CMD0_VMID_SHIFT: u32 = 32;
/// Word 1 bit 0: Leaf (CFGI_STE: only the STE, not descriptors it points to; TLBI: last level).
pub const CMD1_LEAF: u64 = 1 << 0;
/// Word 1 bits [4:0]: Range (CFGI_STE_RANGE).
pub const CMD1_RANGE_MASK: u64 = 0x1f;
/// Word 1 bits [51:12]: IPA (TLBI_S2_IPA).
pub const CMD1_IPA_MASK: u64 = ((1 << 52) - 1) & !0xfff;
/// Word 0 bits [13:12]: CS, completion signal of CMD_SYNC (0b00 none: software polls CONS).
pub const CMD0_SYNC_CS_SHIFT: u32 = 12;
/// CS = none.
pub const SYNC_CS_NONE: u64 = 0b00;

/// Opcode of a command.
pub const fn opcode(cmd: &Command) -> u8 {
    (cmd[0] & 0xff) as u8
}

/// Name of an opcode, for error messages.
pub const fn opcode_name(op: u8) -> &'static str {
    match op {
        0x01 => "CMD_PREFETCH_CONFIG",
        0x02 => "CMD_PREFETCH_ADDR",
        OP_CFGI_STE => "CMD_CFGI_STE",
        OP_CFGI_ALL => "CMD_CFGI_STE_RANGE/ALL",
        0x05 => "CMD_CFGI_CD",
        0x06 => "CMD_CFGI_CD_ALL",
        OP_TLBI_NH_ALL => "CMD_TLBI_NH_ALL",
        0x11 => "CMD_TLBI_NH_ASID",
        0x12 => "CMD_TLBI_NH_VA",
        0x13 => "CMD_TLBI_NH_VAA",
        OP_TLBI_EL2_ALL => "CMD_TLBI_EL2_ALL",
        OP_TLBI_S12_VMALL => "CMD_TLBI_S12_VMALL",
        OP_TLBI_S2_IPA => "CMD_TLBI_S2_IPA",
        OP_TLBI_NSNH_ALL => "CMD_TLBI_NSNH_ALL",
        0x40 => "CMD_ATC_INV",
        0x41 => "CMD_PRI_RESP",
        0x44 => "CMD_RESUME",
        0x45 => "CMD_STALL_TERM",
        OP_CMD_SYNC => "CMD_SYNC",
        _ => "unknown command",
    }
}

/// CMD_CFGI_STE for `sid`, leaf (only the STE itself is cached for a stage-2 stream).
pub const fn cmd_cfgi_ste(sid: u32) -> Command {
    [
        OP_CFGI_STE as u64 | ((sid as u64) << CMD0_SID_SHIFT),
        CMD1_LEAF,
    ]
}

/// CMD_CFGI_ALL: CFGI_STE_RANGE with Range = 31 covers every stream ID.
pub const fn cmd_cfgi_all() -> Command {
    [OP_CFGI_ALL as u64, 31 & CMD1_RANGE_MASK]
}

/// CMD_TLBI_S12_VMALL for `vmid`.
pub const fn cmd_tlbi_s12_vmall(vmid: u16) -> Command {
    [
        OP_TLBI_S12_VMALL as u64 | ((vmid as u64) << CMD0_VMID_SHIFT),
        0,
    ]
}

/// CMD_TLBI_NSNH_ALL.
pub const fn cmd_tlbi_nsnh_all() -> Command {
    [OP_TLBI_NSNH_ALL as u64, 0]
}

/// CMD_TLBI_S2_IPA for `ipa` in `vmid`, non-range form (NUM = SCALE = TG = TTL = 0: entries of
/// any size containing the IPA). `leaf` may be set when only the last-level entry changed.
pub const fn cmd_tlbi_s2_ipa(vmid: u16, ipa: u64, leaf: bool) -> Command {
    [
        OP_TLBI_S2_IPA as u64 | ((vmid as u64) << CMD0_VMID_SHIFT),
        (ipa & CMD1_IPA_MASK) | if leaf { CMD1_LEAF } else { 0 },
    ]
}

/// CMD_SYNC without a completion signal: the driver polls CMDQ_CONS past it.
pub const fn cmd_sync() -> Command {
    [OP_CMD_SYNC as u64 | (SYNC_CS_NONE << CMD0_SYNC_CS_SHIFT), 0]
}

/// CMDQ_CONS.ERR: why the command queue stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdqError {
    /// CERROR_NONE (only seen with GERROR.CMDQ_ERR set if something else went wrong).
    #[error("no error code")]
    None,
    /// CERROR_ILL: an illegal or unsupported command.
    #[error("illegal command (CERROR_ILL)")]
    Illegal,
    /// CERROR_ABT: fetching the command aborted.
    #[error("command fetch aborted (CERROR_ABT)")]
    Abort,
    /// CERROR_ATC_INV_SYNC.
    #[error("ATC invalidation timed out (CERROR_ATC_INV_SYNC)")]
    AtcInvSync,
    /// An IMPLEMENTATION DEFINED code.
    #[error("error code {0:#x}")]
    Other(u8),
}

impl CmdqError {
    /// Decodes the ERR field of a CMDQ_CONS value.
    pub const fn from_cons(cons: u32) -> CmdqError {
        match ((cons >> CMDQ_CONS_ERR_SHIFT) & 0x7f) as u8 {
            0 => CmdqError::None,
            1 => CmdqError::Illegal,
            2 => CmdqError::Abort,
            3 => CmdqError::AtcInvSync,
            other => CmdqError::Other(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queue indices.

/// Index arithmetic of a circular queue of 2^log2size entries. PROD and CONS carry the entry
/// index in bits [log2size-1:0] and a wrap bit at bit log2size, which flips on every pass: equal
/// index and equal wrap is empty, equal index and different wrap is full. Bits above the wrap bit
/// (overflow flags, the CMDQ error field) are not part of the position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2size: u8,
}

impl QueueIndex {
    /// None if the size is beyond what the architecture allows.
    pub const fn new(log2size: u8) -> Option<QueueIndex> {
        if log2size > MAX_QUEUE_LOG2 {
            None
        } else {
            Some(QueueIndex { log2size })
        }
    }

    pub const fn log2size(self) -> u8 {
        self.log2size
    }

    pub const fn entries(self) -> u32 {
        1 << self.log2size
    }

    /// Wrap bit and index bits.
    pub const fn position_mask(self) -> u32 {
        (1 << (self.log2size + 1)) - 1
    }

    /// Entry index of a PROD/CONS value.
    pub const fn index(self, value: u32) -> u32 {
        value & (self.entries() - 1)
    }

    /// Wrap bit of a PROD/CONS value.
    pub const fn wrap(self, value: u32) -> bool {
        value & self.entries() != 0
    }

    pub const fn is_empty(self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.position_mask() == 0
    }

    pub const fn is_full(self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.position_mask() == self.entries()
    }

    /// Entries written and not yet consumed.
    pub const fn used(self, prod: u32, cons: u32) -> u32 {
        // The difference of the (index | wrap) positions modulo twice the size is the fill level.
        prod.wrapping_sub(cons) & self.position_mask()
    }

    /// Entries that can still be written.
    pub const fn free(self, prod: u32, cons: u32) -> u32 {
        self.entries() - self.used(prod, cons)
    }

    /// The position after `value` (index + 1, flipping the wrap bit when the index wraps); bits
    /// above the wrap bit are dropped.
    pub const fn next(self, value: u32) -> u32 {
        value.wrapping_add(1) & self.position_mask()
    }

    /// Whether the consumer position `cons` has gone past the entry at position `target` written
    /// when the producer stood at `target` (i.e. the entry was consumed). Valid while fewer than
    /// `entries()` entries are written after it, which the driver guarantees by waiting for each
    /// sync before reusing the space.
    pub const fn consumed(self, target: u32, cons: u32) -> bool {
        // Entries between target (inclusive) and cons: 1..=entries means consumed.
        let done = cons.wrapping_sub(target) & self.position_mask();
        done != 0 && done <= self.entries()
    }
}

/// Whether the event queue overflowed (events were lost): OVFLG in PROD differs from OVACKFLG
/// in CONS.
pub const fn evtq_overflowed(prod: u32, cons: u32) -> bool {
    (prod ^ cons) & Q_OVERFLOW_FLAG != 0
}

/// The CONS value to write after consuming up to `cons_position`: the new position with
/// OVACKFLG copied from PROD, acknowledging any overflow.
pub const fn evtq_cons_value(q: QueueIndex, cons_position: u32, prod: u32) -> u32 {
    (cons_position & q.position_mask()) | (prod & Q_OVERFLOW_FLAG)
}

// ---------------------------------------------------------------------------------------------
// Global errors.

/// Active global errors (GERROR ^ GERRORN, masked to the architected bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gerror(pub u32);

impl Gerror {
    /// Errors that are active given the two registers.
    pub const fn active(gerror: u32, gerrorn: u32) -> Gerror {
        Gerror((gerror ^ gerrorn) & GERROR_MASK)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn cmdq_error(self) -> bool {
        self.0 & GERROR_CMDQ_ERR != 0
    }
}

const GERROR_NAMES: [(u32, &str); 8] = [
    (GERROR_CMDQ_ERR, "CMDQ_ERR"),
    (GERROR_EVTQ_ABT_ERR, "EVENTQ_ABT_ERR"),
    (GERROR_PRIQ_ABT_ERR, "PRIQ_ABT_ERR"),
    (GERROR_MSI_CMDQ_ABT_ERR, "MSI_CMDQ_ABT_ERR"),
    (GERROR_MSI_EVTQ_ABT_ERR, "MSI_EVENTQ_ABT_ERR"),
    (GERROR_MSI_PRIQ_ABT_ERR, "MSI_PRIQ_ABT_ERR"),
    (GERROR_MSI_GERROR_ABT_ERR, "MSI_GERROR_ABT_ERR"),
    (GERROR_SFM_ERR, "SFM_ERR (service failure mode)"),
];

impl fmt::Display for Gerror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for (bit, name) in GERROR_NAMES {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Event records.

/// Event type (word 0 bits [7:0]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// 0x01: unsupported upstream transaction.
    FUut,
    /// 0x02: stream ID beyond the stream table.
    CBadStreamId,
    /// 0x03: fetching the STE aborted.
    FSteFetch,
    /// 0x04: the STE is invalid or malformed.
    CBadSte,
    /// 0x05.
    FBadAtsTreq,
    /// 0x06: stream disabled (non-substream traffic with S1DSS = terminate).
    FStreamDisabled,
    /// 0x07: translation forbidden (ATS).
    FTranslForbidden,
    /// 0x08.
    CBadSubstreamId,
    /// 0x09: fetching the context descriptor aborted.
    FCdFetch,
    /// 0x0A.
    CBadCd,
    /// 0x0B: external abort during a table walk.
    FWalkEabt,
    /// 0x10: no valid mapping for the address.
    FTranslation,
    /// 0x11: the output address is beyond the configured size.
    FAddrSize,
    /// 0x12: access flag fault.
    FAccess,
    /// 0x13: the mapping forbids the access (e.g. a write to a read-only page).
    FPermission,
    /// 0x20.
    FTlbConflict,
    /// 0x21.
    FCfgConflict,
    /// 0x24: PRI page request.
    EPageRequest,
    /// 0x25.
    FVmsFetch,
    /// Anything else (IMPLEMENTATION DEFINED or reserved).
    Other(u8),
}

impl EventKind {
    pub const fn from_code(code: u8) -> EventKind {
        match code {
            0x01 => EventKind::FUut,
            0x02 => EventKind::CBadStreamId,
            0x03 => EventKind::FSteFetch,
            0x04 => EventKind::CBadSte,
            0x05 => EventKind::FBadAtsTreq,
            0x06 => EventKind::FStreamDisabled,
            0x07 => EventKind::FTranslForbidden,
            0x08 => EventKind::CBadSubstreamId,
            0x09 => EventKind::FCdFetch,
            0x0a => EventKind::CBadCd,
            0x0b => EventKind::FWalkEabt,
            0x10 => EventKind::FTranslation,
            0x11 => EventKind::FAddrSize,
            0x12 => EventKind::FAccess,
            0x13 => EventKind::FPermission,
            0x20 => EventKind::FTlbConflict,
            0x21 => EventKind::FCfgConflict,
            0x24 => EventKind::EPageRequest,
            0x25 => EventKind::FVmsFetch,
            other => EventKind::Other(other),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::FUut => "F_UUT",
            EventKind::CBadStreamId => "C_BAD_STREAMID",
            EventKind::FSteFetch => "F_STE_FETCH",
            EventKind::CBadSte => "C_BAD_STE",
            EventKind::FBadAtsTreq => "F_BAD_ATS_TREQ",
            EventKind::FStreamDisabled => "F_STREAM_DISABLED",
            EventKind::FTranslForbidden => "F_TRANSL_FORBIDDEN",
            EventKind::CBadSubstreamId => "C_BAD_SUBSTREAMID",
            EventKind::FCdFetch => "F_CD_FETCH",
            EventKind::CBadCd => "C_BAD_CD",
            EventKind::FWalkEabt => "F_WALK_EABT",
            EventKind::FTranslation => "F_TRANSLATION",
            EventKind::FAddrSize => "F_ADDR_SIZE",
            EventKind::FAccess => "F_ACCESS",
            EventKind::FPermission => "F_PERMISSION",
            EventKind::FTlbConflict => "F_TLB_CONFLICT",
            EventKind::FCfgConflict => "F_CFG_CONFLICT",
            EventKind::EPageRequest => "E_PAGE_REQUEST",
            EventKind::FVmsFetch => "F_VMS_FETCH",
            EventKind::Other(_) => "event",
        }
    }

    /// Whether the record carries the faulting input address (word 2) and the access flags.
    pub const fn has_input_address(self) -> bool {
        matches!(
            self,
            EventKind::FUut
                | EventKind::FBadAtsTreq
                | EventKind::FTranslForbidden
                | EventKind::FWalkEabt
                | EventKind::FTranslation
                | EventKind::FAddrSize
                | EventKind::FAccess
                | EventKind::FPermission
                | EventKind::FTlbConflict
        )
    }

    /// Whether word 3 holds the physical address of a configuration or table fetch.
    pub const fn has_fetch_address(self) -> bool {
        matches!(
            self,
            EventKind::FSteFetch
                | EventKind::FCdFetch
                | EventKind::FWalkEabt
                | EventKind::FVmsFetch
        )
    }
}

/// Which input a translation fault came from (word 1 bits [41:40]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// 0b00: fetching a context descriptor.
    Cd,
    /// 0b01: walking a stage-1 translation table.
    TranslationTable,
    /// 0b10: the transaction's own input address.
    Input,
    /// 0b11: reserved.
    Reserved,
}

// Event record fields.
/// Word 0 bit 11: SSV, SubstreamID valid.
pub const EVT0_SSV: u64 = 1 << 11;
/// Word 0 bits [31:12]: SubstreamID.
pub const EVT0_SSID_SHIFT: u32 = 12;
/// Word 0 bits [63:32]: StreamID.
pub const EVT0_SID_SHIFT: u32 = 32;
/// Word 1 bits [15:0]: STAG (stall tag).
pub const EVT1_STAG_MASK: u64 = 0xffff;
/// Word 1 bit 31: the transaction is stalled.
pub const EVT1_STALL: u64 = 1 << 31;
/// Word 1 bit 33: PnU, privileged.
pub const EVT1_PNU: u64 = 1 << 33;
/// Word 1 bit 34: InD, instruction fetch.
pub const EVT1_IND: u64 = 1 << 34;
/// Word 1 bit 35: RnW, read (1) or write (0).
pub const EVT1_RNW: u64 = 1 << 35;
/// Word 1 bit 39: S2, the fault is in stage 2.
pub const EVT1_S2: u64 = 1 << 39;
/// Word 1 bits [41:40]: CLASS.
pub const EVT1_CLASS_SHIFT: u32 = 40;
/// Word 3 bits [51:3]: fetch address / IPA (IPA uses [51:12]).
pub const EVT3_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x7;

/// One decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub stream_id: u32,
    pub substream_id: Option<u32>,
    /// The faulting input address (IOVA, here the owning VM's guest-physical address), for kinds
    /// where [`EventKind::has_input_address`].
    pub input_address: u64,
    /// Word 3: the fetch address, or the IPA of a stage-2 fault taken during a stage-1 walk.
    pub address2: u64,
    pub read: bool,
    pub privileged: bool,
    pub instruction: bool,
    pub stage2: bool,
    pub stalled: bool,
    pub class: FaultClass,
}

impl Event {
    /// Decodes the four words of an event record; any bit pattern decodes.
    pub const fn decode(words: &[u64; 4]) -> Event {
        let w0 = words[0];
        let w1 = words[1];
        let class = match (w1 >> EVT1_CLASS_SHIFT) & 0b11 {
            0b00 => FaultClass::Cd,
            0b01 => FaultClass::TranslationTable,
            0b10 => FaultClass::Input,
            _ => FaultClass::Reserved,
        };
        Event {
            kind: EventKind::from_code((w0 & 0xff) as u8),
            stream_id: (w0 >> EVT0_SID_SHIFT) as u32,
            substream_id: if w0 & EVT0_SSV != 0 {
                Some(((w0 >> EVT0_SSID_SHIFT) & 0xf_ffff) as u32)
            } else {
                None
            },
            input_address: words[2],
            address2: words[3] & EVT3_ADDR_MASK,
            read: w1 & EVT1_RNW != 0,
            privileged: w1 & EVT1_PNU != 0,
            instruction: w1 & EVT1_IND != 0,
            stage2: w1 & EVT1_S2 != 0,
            stalled: w1 & EVT1_STALL != 0,
            class,
        }
    }
}

impl fmt::Display for Event {
    /// One log line, e.g. `SMMU F_TRANSLATION: stream 0x10 write at IOVA 0x48000000 (stage 2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMU {}", self.kind.name())?;
        if let EventKind::Other(code) = self.kind {
            write!(f, " {code:#04x}")?;
        }
        write!(f, ": stream {:#x}", self.stream_id)?;
        if let Some(ssid) = self.substream_id {
            write!(f, " substream {ssid:#x}")?;
        }
        if self.kind.has_input_address() {
            let access = match (self.read, self.instruction) {
                (_, true) => "fetch",
                (true, false) => "read",
                (false, false) => "write",
            };
            write!(f, " {access} at IOVA {:#x}", self.input_address)?;
            if self.stage2 {
                f.write_str(" (stage 2")?;
            } else {
                f.write_str(" (stage 1")?;
            }
            match self.class {
                FaultClass::Input => {}
                FaultClass::Cd => f.write_str(", fetching a CD")?,
                FaultClass::TranslationTable => f.write_str(", walking stage-1 tables")?,
                FaultClass::Reserved => f.write_str(", class 0b11")?,
            }
            f.write_str(")")?;
        }
        if self.kind.has_fetch_address() {
            write!(f, " fetching PA {:#x}", self.address2)?;
        }
        if self.stalled {
            f.write_str(" [stalled]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
