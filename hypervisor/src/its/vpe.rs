//! The vPEs of driver-domain vCPUs (issue 15, step 2's pure part; the binary's `gicv4.rs`
//! drives it): vPEID allocation, the sizes of a vPE's tables, each vPE's doorbell LPI, the ITS
//! command sequences for a VM's start, a vCPU's move to another pCPU and a VM's stop, and the
//! GICR_VPROPBASER/GICR_VPENDBASER values for vCPU entry and exit with the exit's bounded
//! wait and PendingLast decision.

use alloc::vec::Vec;

use super::bringup::{PHYSICAL_LPI_ID_BITS, VPES};
use super::{
    lpi_config_table_bytes, pending_table_bytes, vinvall, vmapp, vmovp, vpendbaser, vpropbaser,
    vsync, Command, ItsError, RdBase, VpeMapping, Vpendbaser, LPI_INTID_BASE,
};

/// vINTID bits of every vPE: QEMU takes vLPI INTIDs below 2^16 only, whatever IDbits says
/// (its `intid_in_lpi_range`), so 16 bits: 8 KiB virtual pending tables and a 56 KiB vLPI
/// configuration table per VM.
pub const VINTID_BITS: u32 = 16;

/// Why a vPE operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VpeError {
    #[error("all {VPES} vPEIDs are in use")]
    Exhausted,
    #[error("vPEID {0} is not in use")]
    NotInUse(u16),
    #[error(transparent)]
    Encoding(#[from] ItsError),
}

/// The vPEIDs handed out (one bit each; the vPE table covers [`VPES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpeIds {
    used: u64,
}

const _: () = assert!(VPES as usize <= u64::BITS as usize);

impl VpeIds {
    /// The lowest free vPEID.
    pub fn alloc(&mut self) -> Result<u16, VpeError> {
        let free = !self.used & mask(VPES);
        if free == 0 {
            return Err(VpeError::Exhausted);
        }
        let id = free.trailing_zeros();
        self.used |= 1 << id;
        Ok(id as u16)
    }

    /// Gives `id` back; one that was not handed out is refused (a double free would let two
    /// vCPUs share a vPE).
    pub fn free(&mut self, id: u16) -> Result<(), VpeError> {
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0) & mask(VPES);
        if bit == 0 || self.used & bit == 0 {
            return Err(VpeError::NotInUse(id));
        }
        self.used &= !bit;
        Ok(())
    }

    /// vPEIDs in use.
    pub fn in_use(&self) -> u32 {
        self.used.count_ones()
    }
}

const fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// Bytes and alignment of a vPE's virtual pending table, and of a VM's vLPI configuration
/// table: ((pending bytes, align), (config bytes, align)).
pub fn table_sizes() -> ((u64, u64), (u64, u64)) {
    // VINTID_BITS is within range, so neither fails.
    let pending = pending_table_bytes(VINTID_BITS).unwrap_or(0);
    let config = lpi_config_table_bytes(VINTID_BITS).unwrap_or(0);
    ((pending, 0x1_0000), (config, 0x1000))
}

/// One vPE as the ITS knows it: its id and virtual pending table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpe {
    pub id: u16,
    pub vpt: u64,
}

/// A VM's start: VMAPP for each of its vPEs to the redistributor of the pCPU it starts on,
/// VINVALL (the GIC reads the VM's configuration table afresh), then VSYNC each.
pub fn start_commands(vpes: &[(Vpe, RdBase)]) -> Result<Vec<Command>, ItsError> {
    let mut commands = Vec::with_capacity(3 * vpes.len());
    for &(vpe, target) in vpes {
        commands.push(vmapp(
            vpe.id,
            Some(VpeMapping {
                target,
                vpt_addr: vpe.vpt,
                vintid_bits: VINTID_BITS,
            }),
        )?);
        commands.push(vinvall(vpe.id));
    }
    commands.extend(vpes.iter().map(|(vpe, _)| vsync(vpe.id)));
    Ok(commands)
}

/// A vCPU moved to another pCPU: VMOVP to that pCPU's redistributor, then VSYNC (QEMU has
/// GITS_TYPER.VMOVP = 1: one ITS, SequenceNumber and ITSList ignored).
pub fn move_commands(id: u16, target: RdBase) -> Result<[Command; 2], ItsError> {
    Ok([vmovp(id, target, 0, 0)?, vsync(id)])
}

/// A VM's stop or restart: VMAPP V = 0 for each vPE (after the device's events were
/// DISCARDed, which the caller queues first).
pub fn stop_commands(ids: &[u16]) -> Result<Vec<Command>, ItsError> {
    ids.iter().map(|&id| vmapp(id, None)).collect()
}

/// The redistributor values of a vCPU's residency: VPROPBASER (the VM's configuration table)
/// and VPENDBASER with Valid for entry, without for exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Residency {
    pub vpropbaser: u64,
    pub enter: u64,
    pub leave: u64,
}

impl Residency {
    /// The values for the vPE whose pending table is at `vpt`, of the VM whose configuration
    /// table is at `config`.
    pub fn new(config: u64, vpt: u64) -> Result<Residency, ItsError> {
        Ok(Residency {
            vpropbaser: vpropbaser(config, VINTID_BITS)?,
            enter: vpendbaser(vpt, true)?,
            leave: vpendbaser(vpt, false)?,
        })
    }
}

/// What a GICR_VPENDBASER read after clearing Valid says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// The redistributor is still writing the vPE's state out: read again (bounded).
    Dirty,
    /// Out, with (`true`) or without a vLPI pending: a pending one makes the vCPU runnable
    /// even if it was about to block in WFI (its doorbell will not ring for it).
    Out { pending: bool },
    /// Valid still set: the write did not take.
    StillResident,
}

/// Decodes the GICR_VPENDBASER read after a vCPU's exit.
pub fn left(readback: u64) -> Left {
    let v = Vpendbaser::decode(readback);
    if v.valid {
        Left::StillResident
    } else if v.dirty {
        Left::Dirty
    } else {
        Left::Out {
            pending: v.pending_last,
        }
    }
}

/// Reads of GICR_VPENDBASER spent waiting for Dirty to clear after a vCPU's exit. QEMU never
/// sets Dirty; hardware takes a few hundred cycles.
pub const LEAVE_SPIN_LIMIT: u32 = 100_000;

/// Why a vPE did not leave its redistributor cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaveFault {
    #[error("GICR_VPENDBASER.Valid stayed set after it was cleared (reads {0:#x})")]
    StillResident(u64),
    #[error("GICR_VPENDBASER.Dirty stayed set for {LEAVE_SPIN_LIMIT} reads")]
    StillDirty,
}

/// Waits (bounded) for a vPE whose Valid was just cleared to be out, from successive reads of
/// GICR_VPENDBASER: whether a vLPI was pending when it left (PendingLast).
pub fn wait_out(mut read: impl FnMut() -> u64) -> Result<bool, LeaveFault> {
    for _ in 0..LEAVE_SPIN_LIMIT {
        let v = read();
        match left(v) {
            Left::Out { pending } => return Ok(pending),
            Left::StillResident => return Err(LeaveFault::StillResident(v)),
            Left::Dirty => core::hint::spin_loop(),
        }
    }
    Err(LeaveFault::StillDirty)
}

/// The physical LPI that rings for vPE `id` when a vLPI arrives while it is not resident: one
/// per vPE, from the first LPI up (GICv4.0 names the doorbell per VMAPTI; sluice gives every
/// vLPI of a vPE the same one, so the doorbell names the vCPU to wake).
pub fn doorbell_of(id: u16) -> Result<u32, VpeError> {
    if u32::from(id) >= VPES {
        return Err(VpeError::NotInUse(id));
    }
    Ok(LPI_INTID_BASE + u32::from(id))
}

/// The vPE whose doorbell is physical INTID `intid`, if it is one.
pub fn vpe_of_doorbell(intid: u32) -> Option<u16> {
    let id = intid.checked_sub(LPI_INTID_BASE)?;
    (id < VPES).then_some(id as u16)
}

/// The doorbells' bytes in the physical LPI configuration table (offset from its start, the
/// byte): every vPE's doorbell enabled at `priority`, set once at boot before any
/// redistributor enables LPIs, so no configuration cache holds an older value.
pub fn doorbell_config(priority: u8) -> Result<Vec<(u64, u8)>, ItsError> {
    let byte = super::lpi_config_byte(priority, true)?;
    const _: () = assert!(LPI_INTID_BASE as u64 + VPES as u64 <= 1 << PHYSICAL_LPI_ID_BITS);
    Ok((0..VPES).map(|id| (u64::from(id), byte)).collect())
}

#[cfg(test)]
mod tests;
