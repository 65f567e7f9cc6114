//! The physical ITS brought up and its command queue run (issue 15, step 1): which interrupt
//! path the machine allows (vLPI direct injection or INTx, and why), the order of register
//! writes that gives the ITS its device, collection and vPE tables and its command queue, the
//! redistributors' physical LPI tables, and the bounded wait for commands to complete.
//!
//! Everything is written against [`ItsHw`], so the same code drives QEMU's ITS (the binary's
//! `arch/its.rs`) and the host tests' model ITS. Values read back from the ITS are checked
//! before they are used (CREADR indexes the queue only once it is known to be a slot of it),
//! and every wait is bounded.

use super::{
    baser_value, check_addr, check_id_bits, CommandQueue, ItsError, TableType, Typer,
    COMMAND_BYTES, GITS_BASER0, GITS_BASER_COUNT, GITS_CBASER, GITS_CREADR, GITS_CTLR,
    GITS_CTLR_ENABLED, GITS_CTLR_QUIESCENT, GITS_CWRITER, MIN_LPI_ID_BITS, SZ_64K,
};
use super::{Baser, Command, CACHE_RAWAWB, SHARE_INNER, SZ_4K};

/// What the bring-up and the command writer need from an ITS: its registers (64-bit accesses
/// for the 64-bit registers, as QEMU wants) and its command queue's memory.
pub trait ItsHw {
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
    fn read64(&mut self, offset: usize) -> u64;
    fn write64(&mut self, offset: usize, value: u64);
    /// Stores `command` at byte `offset` of the command queue, visible to the ITS before the
    /// next register write. `false`: not stored (no queue known, or `offset` outside it).
    fn store_command(&mut self, offset: u64, command: &Command) -> bool;
}

/// Register reads spent waiting for the ITS (CREADR to reach CWRITER, Quiescent) before it is
/// declared hung. QEMU executes commands synchronously on the CWRITER write, so one read
/// suffices there; hardware takes microseconds.
pub const SPIN_LIMIT: u32 = 1_000_000;

/// Why NIC interrupts stay on INTx: the machine offers no GICv4.0 direct injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoDirectInjection {
    #[error("no ITS in the device tree")]
    NoIts,
    #[error("the distributor has no LPIs (GICD_TYPER.LPIS = 0)")]
    NoLpis,
    #[error("the distributor has {0} INTID bits, LPIs need at least 14")]
    FewIdBits(u32),
    #[error("the ITS translates physical LPIs only (GICv3: GITS_TYPER.Virtual = 0)")]
    NotVirtual,
    #[error("the ITS is GICv4.1, whose VMAPP/VPENDBASER layouts this hypervisor does not speak")]
    Gicv41,
    #[error("the redistributors have no virtual LPIs (GICR_TYPER.VLPIS = 0)")]
    NoRedistributorVlpis,
    #[error("the ITS cannot address {needed} DeviceIDs (it has {bits} bits)")]
    FewDeviceIdBits { bits: u32, needed: u32 },
}

/// What the probe found: the ITS's GITS_TYPER (if there is an ITS) and the GIC's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicFeatures {
    /// GITS_TYPER of the ITS the device tree names, `None` without one.
    pub its_typer: Option<u64>,
    /// GICD_TYPER.LPIS.
    pub lpis: bool,
    /// GICD_TYPER.IDbits + 1.
    pub id_bits: u32,
    /// GICR_TYPER.VLPIS of every redistributor the hypervisor uses.
    pub redistributor_vlpis: bool,
}

/// DeviceIDs the device table covers: the requester IDs of PCI bus 0, the bus the SMMU's
/// stream table covers and the passed-through function lives on.
pub const DEVICE_IDS: u32 = 256;
/// vPEs the vPE table covers: one per driver-domain vCPU, far more than a topology has.
pub const VPES: u32 = 64;
/// INTID bits of the physical LPI space (GICR_PROPBASER.IDbits + 1): 8192 LPIs, enough for the
/// doorbells, with an 8 KiB configuration table and 2 KiB pending tables.
pub const PHYSICAL_LPI_ID_BITS: u32 = MIN_LPI_ID_BITS;

/// Decides between vLPI direct injection and INTx from what the probe found.
pub fn direct_injection(f: &GicFeatures) -> Result<Typer, NoDirectInjection> {
    let typer = Typer::decode(f.its_typer.ok_or(NoDirectInjection::NoIts)?);
    if !f.lpis {
        return Err(NoDirectInjection::NoLpis);
    }
    if f.id_bits < PHYSICAL_LPI_ID_BITS {
        return Err(NoDirectInjection::FewIdBits(f.id_bits));
    }
    if typer.gicv41 {
        return Err(NoDirectInjection::Gicv41);
    }
    if !typer.physical || !typer.virtual_lpis {
        return Err(NoDirectInjection::NotVirtual);
    }
    if !f.redistributor_vlpis {
        return Err(NoDirectInjection::NoRedistributorVlpis);
    }
    if typer.device_id_bits < 8 {
        return Err(NoDirectInjection::FewDeviceIdBits {
            bits: typer.device_id_bits,
            needed: DEVICE_IDS,
        });
    }
    Ok(typer)
}

/// Why the ITS could not be brought up or stopped answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItsFault {
    #[error(transparent)]
    Encoding(#[from] ItsError),
    #[error("no memory for the ITS's {0}")]
    OutOfMemory(&'static str),
    #[error("GITS_BASER{n} did not take {wrote:#x} (reads {read:#x})")]
    BaserRefused { n: usize, wrote: u64, read: u64 },
    #[error("GITS_CBASER did not take {wrote:#x} (reads {read:#x})")]
    CbaserRefused { wrote: u64, read: u64 },
    #[error("the ITS has no {0} table (no GITS_BASER of that type)")]
    MissingTable(&'static str),
    #[error("the ITS did not become quiescent when disabled")]
    NotQuiescent,
    #[error("GITS_CTLR.Enabled did not stick")]
    NotEnabled,
    #[error("the ITS stalled at command offset {0:#x}")]
    Stalled(u64),
    #[error("the ITS did not finish its commands within {SPIN_LIMIT} reads of GITS_CREADR")]
    Timeout,
    #[error("the ITS is out of service after an earlier fault")]
    OutOfService,
    #[error("command slot {0:#x} is not in the command queue the ITS was given")]
    QueueUnknown(u64),
}

/// Where the bring-up put a table (for the log, and for the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TablePlacement {
    pub table_type: TableType,
    pub addr: u64,
    pub bytes: u64,
}

/// Pages of the command queue: 64 KiB, 2048 commands (as Linux's `ITS_CMD_QUEUE_SZ`).
pub const QUEUE_PAGES: u64 = 16;

/// The ITS's state in the hypervisor: what GITS_TYPER says, the queue, and where software
/// writes next. A fault (stall, timeout) puts it out of service for good: no command is
/// written to an ITS whose queue state is unknown.
#[derive(Debug)]
pub struct Its {
    pub typer: Typer,
    queue: CommandQueue,
    write: u64,
    pub tables: [Option<TablePlacement>; GITS_BASER_COUNT],
    pub queue_addr: u64,
    failed: bool,
}

impl Its {
    /// Brings the ITS up: disabled (waiting for Quiescent), every implemented GITS_BASER given
    /// a flat table of zeroed memory from `alloc(bytes, align)` sized for [`DEVICE_IDS`],
    /// `collections` and [`VPES`] entries, the command queue in GITS_CBASER, CWRITER = 0, then
    /// GITS_CTLR.Enabled. Each register is read back; a value the ITS did not take is a fault.
    pub fn bring_up(
        hw: &mut dyn ItsHw,
        typer: Typer,
        collections: u32,
        alloc: &mut dyn FnMut(u64, u64) -> Option<u64>,
    ) -> Result<Its, ItsFault> {
        if hw.read32(GITS_CTLR) & GITS_CTLR_ENABLED != 0 {
            hw.write32(GITS_CTLR, 0);
        }
        wait(|| hw.read32(GITS_CTLR) & GITS_CTLR_QUIESCENT != 0)
            .map_err(|_| ItsFault::NotQuiescent)?;
        let mut tables = [None; GITS_BASER_COUNT];
        for (n, slot) in tables.iter_mut().enumerate() {
            let offset = GITS_BASER0 + 8 * n;
            let current = hw.read64(offset);
            let reset = Baser::decode(current);
            let entries = match reset.table_type {
                TableType::Device => DEVICE_IDS,
                TableType::Collection => collections,
                TableType::Vpe => VPES,
                TableType::Unimplemented | TableType::Reserved(_) => continue,
            };
            let page_size = reset.page_size;
            let pages = reset.flat_pages(u64::from(entries), page_size)?;
            let bytes = pages * page_size.bytes();
            let addr = alloc(bytes, page_size.bytes()).ok_or(ItsFault::OutOfMemory("tables"))?;
            let value = baser_value(current, reset.table_type, addr, pages, page_size)?;
            hw.write64(offset, value);
            let read = hw.read64(offset);
            if read != value {
                return Err(ItsFault::BaserRefused {
                    n,
                    wrote: value,
                    read,
                });
            }
            *slot = Some(TablePlacement {
                table_type: reset.table_type,
                addr,
                bytes,
            });
        }
        let has = |t: TableType| tables.iter().flatten().any(|p| p.table_type == t);
        for (t, name) in [
            (TableType::Device, "device"),
            (TableType::Collection, "collection"),
            (TableType::Vpe, "vPE"),
        ] {
            // QEMU's HCC is 0: collections live in memory too.
            if !has(t) {
                return Err(ItsFault::MissingTable(name));
            }
        }
        let queue = CommandQueue::new(QUEUE_PAGES)?;
        let queue_bytes = QUEUE_PAGES * SZ_4K;
        let queue_addr =
            alloc(queue_bytes, SZ_64K).ok_or(ItsFault::OutOfMemory("command queue"))?;
        let cbaser = queue.cbaser(queue_addr)?;
        hw.write64(GITS_CBASER, cbaser);
        let read = hw.read64(GITS_CBASER);
        if read != cbaser {
            return Err(ItsFault::CbaserRefused {
                wrote: cbaser,
                read,
            });
        }
        hw.write64(GITS_CWRITER, queue.cwriter(0)?);
        hw.write32(GITS_CTLR, GITS_CTLR_ENABLED);
        if hw.read32(GITS_CTLR) & GITS_CTLR_ENABLED == 0 {
            return Err(ItsFault::NotEnabled);
        }
        Ok(Its {
            typer,
            queue,
            write: 0,
            tables,
            queue_addr,
            failed: false,
        })
    }

    /// Queues `commands` and waits (bounded) until the ITS has read past all of them. A
    /// stalled or hung ITS, or a CREADR that is not a slot of the queue, puts it out of service.
    pub fn run(&mut self, hw: &mut dyn ItsHw, commands: &[Command]) -> Result<(), ItsFault> {
        if self.failed {
            return Err(ItsFault::OutOfService);
        }
        let result = self.run_inner(hw, commands);
        if matches!(
            result,
            Err(ItsFault::Stalled(_)
                | ItsFault::Timeout
                | ItsFault::Encoding(_)
                | ItsFault::QueueUnknown(_))
        ) {
            self.failed = true;
        }
        result
    }

    fn run_inner(&mut self, hw: &mut dyn ItsHw, commands: &[Command]) -> Result<(), ItsFault> {
        let mut pending = commands;
        while !pending.is_empty() {
            let read = self.read_slot(hw)?;
            let room = self.queue.free(self.write, read) as usize;
            let batch = room.min(pending.len());
            for command in &pending[..batch] {
                let (offset, next) = self.queue.claim(self.write, read)?;
                if !hw.store_command(offset, command) {
                    return Err(ItsFault::QueueUnknown(offset));
                }
                self.write = next;
            }
            pending = &pending[batch..];
            hw.write64(GITS_CWRITER, self.queue.cwriter(self.write)?);
            self.wait_drained(hw)?;
        }
        Ok(())
    }

    fn read_slot(&self, hw: &mut dyn ItsHw) -> Result<u64, ItsFault> {
        let (slot, stalled) = self.queue.creadr(hw.read64(GITS_CREADR))?;
        if stalled {
            return Err(ItsFault::Stalled(slot * COMMAND_BYTES));
        }
        Ok(slot)
    }

    fn wait_drained(&self, hw: &mut dyn ItsHw) -> Result<(), ItsFault> {
        for _ in 0..SPIN_LIMIT {
            if self.read_slot(hw)? == self.write {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(ItsFault::Timeout)
    }

    /// The ITS is out of service after a fault.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// Polls `done` at most [`SPIN_LIMIT`] times.
fn wait(mut done: impl FnMut() -> bool) -> Result<(), ()> {
    for _ in 0..SPIN_LIMIT {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(())
}

// ---------------------------------------------------------------------------------------------
// The redistributors' physical LPI tables (IHI 0069 GICR_CTLR, GICR_PROPBASER, GICR_PENDBASER;
// QEMU `FIELD(GICR_PROPBASER/GICR_PENDBASER, ...)`). The doorbells of issue 15 are physical
// LPIs, so every redistributor needs LPIs on before a vPE can ring one.

/// GICR_CTLR, from RD_base.
pub const GICR_CTLR: usize = 0x0000;
/// GICR_CTLR.EnableLPIs.
pub const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
/// GICR_PROPBASER (64-bit), from RD_base.
pub const GICR_PROPBASER: usize = 0x0070;
/// GICR_PENDBASER (64-bit), from RD_base.
pub const GICR_PENDBASER: usize = 0x0078;
/// GICR_PROPBASER for the LPI configuration table at `addr` (4 KiB-aligned) covering `id_bits`
/// INTID bits: IDbits [4:0] = bits - 1, InnerCache [9:7], Shareability [11:10],
/// Physical_Address [51:12], OuterCache [58:56] = 0 (same as inner). The same value goes into
/// every redistributor: they share one configuration table.
pub fn propbaser(addr: u64, id_bits: u32) -> Result<u64, ItsError> {
    let bits = check_id_bits("GICR_PROPBASER", id_bits, MIN_LPI_ID_BITS, 32)?;
    let addr = check_addr("LPI configuration table", addr, SZ_4K)?;
    Ok(addr | (SHARE_INNER << 10) | (CACHE_RAWAWB << 7) | u64::from(bits - 1))
}

/// GICR_PENDBASER for a zeroed LPI pending table at `addr` (64 KiB-aligned: Physical_Address is
/// [51:16]): InnerCache [9:7], Shareability [11:10], OuterCache [58:56] = 0. PTZ [62] stays 0:
/// the table was zeroed, so the GIC may read it, and QEMU would keep a written PTZ in the value
/// it reads back.
pub fn pendbaser(addr: u64) -> Result<u64, ItsError> {
    let addr = check_addr("LPI pending table", addr, SZ_64K)?;
    Ok(addr | (SHARE_INNER << 10) | (CACHE_RAWAWB << 7))
}

/// GICR_PROPBASER's Physical_Address [51:12] and IDbits [4:0].
const PROPBASER_KEPT: u64 = 0x000f_ffff_ffff_f01f;
/// GICR_PENDBASER's Physical_Address [51:16].
const PENDBASER_KEPT: u64 = 0x000f_ffff_ffff_0000;

/// The register writes that give one redistributor its LPIs, in order: PROPBASER, PENDBASER,
/// then CTLR.EnableLPIs (after which the two base registers are read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedistributorLpis {
    pub propbaser: u64,
    pub pendbaser: u64,
}

impl RedistributorLpis {
    /// The values for a redistributor whose pending table is at `pending` (64 KiB-aligned,
    /// zeroed), sharing the configuration table at `config`.
    pub fn new(config: u64, pending: u64) -> Result<Self, ItsError> {
        Ok(RedistributorLpis {
            propbaser: propbaser(config, PHYSICAL_LPI_ID_BITS)?,
            pendbaser: pendbaser(pending)?,
        })
    }

    /// Whether a redistributor took these values, from what its base registers read back: the
    /// addresses and ID bits must be there; the cacheability and shareability a GIC may lower
    /// (Linux copes with that too) and are not compared.
    pub fn taken(&self, propbaser: u64, pendbaser: u64) -> bool {
        propbaser & PROPBASER_KEPT == self.propbaser & PROPBASER_KEPT
            && pendbaser & PENDBASER_KEPT == self.pendbaser & PENDBASER_KEPT
    }
}

/// Bytes of the physical LPI configuration table and of each pending table.
pub fn physical_lpi_table_bytes() -> (u64, u64) {
    // PHYSICAL_LPI_ID_BITS is a valid constant, so neither can fail.
    let config = (1u64 << PHYSICAL_LPI_ID_BITS) - u64::from(super::LPI_INTID_BASE);
    let pending = (1u64 << PHYSICAL_LPI_ID_BITS) / 8;
    (config, pending)
}

/// A GITS_BASER value's page size and type, for the log.
pub fn table_name(t: TableType) -> &'static str {
    match t {
        TableType::Device => "device",
        TableType::Collection => "collection",
        TableType::Vpe => "vPE",
        TableType::Unimplemented | TableType::Reserved(_) => "other",
    }
}

#[cfg(test)]
mod tests;
