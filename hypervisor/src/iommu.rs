//! The SMMU as the hypervisor state owns it (`Hv::iommu`): taken over at boot so
//! that every stream aborts, one stream attached to its owner's stage 2 at a time, its events
//! logged, and the TLB maintenance every stage-2 unmap needs.
//!
//! Every stage-2 unmap in any VM goes through [`Iommu::invalidate_ipas`], which invalidates the
//! CPUs' TLBs and, when that VM owns a device, the SMMU's too: otherwise the device could keep
//! writing to a page the owner no longer maps (an ended grant) through a cached translation.
//!
//! It depends on nothing above the arch layer, so both `vm` (RAM unmaps) and `passthrough`
//! (attaching the function) use it without depending on each other.

use alloc::format;
use alloc::string::String;

use hypervisor::mm::frame_alloc::FrameAllocator;
use log::{error, info, warn};

use alloc::vec::Vec;

use crate::arch::mem::{tlbi_ipas_for, tlbi_vmid_all_for};
use crate::arch::smmu::Smmu;
use crate::arch::{gic, platform};
use crate::dtb::Machine;

/// Stream-table size: bus 0 only (the virt machine's root bus); streams beyond abort anyway.
const SID_BITS: u8 = 8;
/// SMMU events logged in full; after that only a count every `EVENT_LOG_EVERY` events, so a
/// device hammering a bad address cannot flood the console.
const EVENTS_LOGGED_IN_FULL: u32 = 16;
const EVENT_LOG_EVERY: u32 = 1000;

/// The stream attached to a VM's stage 2.
#[derive(Clone)]
struct Attached {
    sid: u32,
    vmid: u16,
    owner: String,
}

/// Unmapped stage-2 pieces of one VM whose invalidation waits for
/// [`Iommu::flush_deferred`] (a teardown's many grant unmaps, one invalidation for all).
struct Deferred {
    vmid: u16,
    root_pa: u64,
    pieces: Vec<(u64, u64)>,
}

/// Deferred pieces up to this many are invalidated one by one (TLBI by IPA); more, and every
/// entry of the VMID goes at once (one TLBI VMALLS12E1IS, one CMD_TLBI_S12_VMALL): under QEMU
/// each broadcast TLBI is a synchronised flush of every vCPU's soft TLB.
const BY_IPA_MAX: usize = 16;

/// The machine's SMMU, if it has one, and what is attached to it.
pub struct Iommu {
    smmu: Option<Smmu>,
    attached: Option<Attached>,
    deferred: Option<Deferred>,
    events: u32,
    eventq_irq: Option<u32>,
    gerror_irq: Option<u32>,
}

impl Iommu {
    /// A machine without an SMMU: invalidations reach the CPUs only, nothing can be attached.
    pub const fn none() -> Self {
        Iommu {
            smmu: None,
            attached: None,
            deferred: None,
            events: 0,
            eventq_irq: None,
            gerror_irq: None,
        }
    }

    /// Takes the machine's SMMU over (every stream aborts) and turns its event and error
    /// interrupts on; [`Iommu::none`] when the device tree has none.
    pub fn take_over(machine: &Machine, frames: &mut FrameAllocator) -> Result<Self, String> {
        let Some(base) = machine.smmu else {
            return Ok(Self::none());
        };
        let mut smmu = platform::smmu(base, SID_BITS, &mut |pages, align| {
            frames.alloc(pages, align)
        })
        .ok_or("the SMMU was taken over already")?
        .map_err(|e| format!("{e}"))?;
        for irq in [machine.smmu_eventq_irq, machine.smmu_gerror_irq]
            .into_iter()
            .flatten()
        {
            gic::configure_spi(irq.intid, irq.level, true)?;
        }
        smmu.enable_irqs(
            machine.smmu_eventq_irq.is_some(),
            machine.smmu_gerror_irq.is_some(),
        )
        .map_err(|e| format!("{e}"))?;
        info!(
            "SMMUv3 at {base:#x}: all {} streams abort until attached (stage 2: {}, {}-bit VMIDs)",
            smmu.streams(),
            smmu.features().stage2,
            if smmu.features().vmid16 { 16 } else { 8 }
        );
        Ok(Iommu {
            smmu: Some(smmu),
            attached: None,
            deferred: None,
            events: 0,
            eventq_irq: machine.smmu_eventq_irq.map(|i| i.intid),
            gerror_irq: machine.smmu_gerror_irq.map(|i| i.intid),
        })
    }

    pub fn present(&self) -> bool {
        self.smmu.is_some()
    }

    /// True for the SMMU's own interrupts.
    pub fn is_own_irq(&self, raw: u32) -> bool {
        self.eventq_irq == Some(raw) || self.gerror_irq == Some(raw)
    }

    /// Attaches stream `sid` to the stage 2 of the VM with `vmid` and root `root_pa`.
    pub fn attach(
        &mut self,
        sid: u32,
        vmid: u16,
        root_pa: u64,
        vtcr: u64,
        owner: &str,
    ) -> Result<(), String> {
        let smmu = self.smmu.as_mut().ok_or("no SMMU")?;
        smmu.attach_stage2(sid, vmid, root_pa, vtcr)
            .map_err(|e| format!("{e}"))?;
        self.attached = Some(Attached {
            sid,
            vmid,
            owner: String::from(owner),
        });
        Ok(())
    }

    /// Makes stream `sid` abort again.
    pub fn detach(&mut self, sid: u32) {
        if let Some(smmu) = self.smmu.as_mut() {
            if let Err(e) = smmu.detach(sid) {
                error!("SMMU detach of stream {sid:#x} failed: {e}");
            }
        }
        self.attached = None;
    }

    /// Reads, logs and acknowledges SMMU events and global errors (rate-limited).
    pub fn report_events(&mut self) {
        let Some(smmu) = self.smmu.as_mut() else {
            return;
        };
        let poll = smmu.poll_events();
        if poll.overflowed {
            warn!("SMMU event queue overflowed: some events were lost");
        }
        for event in &poll.events {
            self.events += 1;
            let n = self.events;
            if n <= EVENTS_LOGGED_IN_FULL {
                let owner = match &self.attached {
                    Some(a) if a.sid == event.stream_id => {
                        format!(" (device of {}; DMA refused, memory untouched)", a.owner)
                    }
                    _ => String::from(" (unattached stream: DMA refused)"),
                };
                warn!("{event}{owner}");
                if n == EVENTS_LOGGED_IN_FULL {
                    warn!("further SMMU events are counted, not logged one by one");
                }
            } else if n.is_multiple_of(EVENT_LOG_EVERY) {
                warn!("{n} SMMU events so far");
            }
        }
        if let Some(gerror) = smmu.check_gerror() {
            error!("SMMU global error: {gerror}");
        }
    }

    /// Invalidates the TLB entries of `pieces` (from `Stage2::unmap`) of the VM with `vmid` and
    /// stage-2 root `root_pa`: on the CPUs, and in the SMMU if that VM owns a device.
    pub fn invalidate_ipas(&mut self, vmid: u16, root_pa: u64, pieces: &[(u64, u64)]) {
        tlbi_ipas_for(vmid, root_pa, pieces);
        self.smmu_invalidate(vmid, Some(pieces));
    }

    /// Records unmapped `pieces` of the VM with `vmid` and stage-2 root `root_pa` whose TLB
    /// entries [`Iommu::flush_deferred`] invalidates, all at once; nothing may reuse their
    /// frames before that. Pieces of another VM flush what was deferred first.
    pub fn defer_invalidation(&mut self, vmid: u16, root_pa: u64, pieces: &[(u64, u64)]) {
        if self
            .deferred
            .as_ref()
            .is_some_and(|d| d.vmid != vmid || d.root_pa != root_pa)
        {
            self.flush_deferred();
        }
        self.deferred
            .get_or_insert_with(|| Deferred {
                vmid,
                root_pa,
                pieces: Vec::new(),
            })
            .pieces
            .extend_from_slice(pieces);
    }

    /// Invalidates what [`Iommu::defer_invalidation`] recorded: by IPA when it is a few pieces,
    /// else every entry of the VMID (on the CPUs and in the SMMU when that VM owns a device).
    pub fn flush_deferred(&mut self) {
        let Some(d) = self.deferred.take() else {
            return;
        };
        if d.pieces.len() <= BY_IPA_MAX {
            self.invalidate_ipas(d.vmid, d.root_pa, &d.pieces);
        } else {
            tlbi_vmid_all_for(d.vmid, d.root_pa);
            self.smmu_invalidate(d.vmid, None);
        }
    }

    /// The SMMU's side of an invalidation for `vmid`, if that VM owns the attached device:
    /// `pieces` by IPA, or (`None`) every entry of the VMID.
    fn smmu_invalidate(&mut self, vmid: u16, pieces: Option<&[(u64, u64)]>) {
        let Some(smmu) = self.smmu.as_mut() else {
            return;
        };
        let Some(Attached { sid, owner, .. }) = self.attached.clone().filter(|a| a.vmid == vmid)
        else {
            return;
        };
        let done = match pieces {
            Some(pieces) => smmu.tlbi_ipas(vmid, pieces),
            None => smmu.tlbi_vmid(vmid),
        };
        if let Err(e) = done {
            // The device could still reach the unmapped pages through a stale translation, and
            // they may already belong to someone else: cut its DMA off entirely. Aborting the
            // stream is a stream-table write plus CFGI, which does not depend on the TLBI that
            // failed; if even that fails, say so loudly.
            self.attached = None;
            match smmu.detach(sid) {
                Ok(()) => error!(
                    "SMMU TLB invalidation for VMID {vmid} failed ({e}): stream {sid:#x} of \
                     {owner} detached, its DMA now aborts"
                ),
                Err(detach) => error!(
                    "SMMU TLB invalidation for VMID {vmid} failed ({e}) and detaching stream \
                     {sid:#x} of {owner} failed too ({detach}): its DMA may reach stale pages"
                ),
            }
        }
    }
}
