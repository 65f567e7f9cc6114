//! Virtual interrupt delivery through GICv3 list registers.
//!
//! A vCPU's pending virtual interrupts wait in a [`VirqQueue`]; on every entry to the vCPU the
//! queue refills the free list registers. When more are pending than fit (QEMU's GIC has only four
//! list registers), the caller enables the underflow maintenance interrupt (ICH_HCR_EL2.UIE) and
//! refills again when it fires, so no interrupt is lost.
//!
//! A second copy of an INTID that is still in a list register cannot be placed (a GIC interrupt is
//! pending at most once). Underflow would be the wrong signal for it — it can stay asserted while the
//! guest is still handling the first copy, trapping the guest before every instruction — so the list
//! register holding the first copy gets its EOI bit instead: exactly one maintenance interrupt when
//! the guest deactivates it.
//!
//! A passed-through device's interrupt is injected with the list register's hardware bit
//! ([`VirqQueue::push_hw`]): the list register names the physical INTID too, and the guest's
//! deactivation of the virtual interrupt deactivates the physical one. The hypervisor only drops
//! the physical priority when it takes the interrupt, so the line cannot fire again until the
//! guest has handled it; no maintenance interrupt is involved.

use heapless::Deque;

/// List register fields (ICH_LR<n>_EL2).
pub const LR_STATE_SHIFT: u32 = 62;
pub const LR_STATE_MASK: u64 = 0b11 << LR_STATE_SHIFT;
pub const LR_STATE_PENDING: u64 = 0b01 << LR_STATE_SHIFT;
pub const LR_STATE_ACTIVE: u64 = 0b10 << LR_STATE_SHIFT;
pub const LR_GROUP1: u64 = 1 << 60;
/// Maintenance interrupt when the guest deactivates this interrupt (software interrupts only).
pub const LR_EOI: u64 = 1 << 41;
/// The virtual interrupt is linked to a physical one (bits 41:32 hold its INTID).
pub const LR_HW: u64 = 1 << 61;
pub const LR_PINTID_SHIFT: u32 = 32;
pub const LR_PINTID_MASK: u64 = 0x3ff << LR_PINTID_SHIFT;
pub const LR_PRIORITY_SHIFT: u32 = 48;
pub const LR_VINTID_MASK: u64 = 0xffff_ffff;

/// Priority given to every virtual interrupt (the guests do not use preemption between them).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// How many virtual interrupts may wait per vCPU beyond the list registers.
pub const QUEUE_CAPACITY: usize = 64;
/// How many distinct physical interrupts one vCPU can hold through hardware list registers (one
/// passed-through function's line today; room for a few more).
pub const HW_RELEASE_MAX: usize = 8;

/// A pending, group-1 list register value for `intid`.
pub const fn pending_lr(intid: u32, priority: u8) -> u64 {
    LR_STATE_PENDING | LR_GROUP1 | ((priority as u64) << LR_PRIORITY_SHIFT) | intid as u64
}

/// A pending list register for `vintid` linked to physical `pintid` (an SPI, below 1020).
pub const fn pending_hw_lr(vintid: u32, pintid: u32, priority: u8) -> u64 {
    pending_lr(vintid, priority) | LR_HW | (((pintid as u64) << LR_PINTID_SHIFT) & LR_PINTID_MASK)
}

pub const fn lr_intid(lr: u64) -> u32 {
    (lr & LR_VINTID_MASK) as u32
}

/// A list register is free when its state is invalid (the guest has EOId its interrupt).
pub const fn lr_is_free(lr: u64) -> bool {
    lr & LR_STATE_MASK == 0
}

#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// One waiting virtual interrupt: its INTID, and the physical INTID it is linked to (0: none,
/// a software interrupt; SGI 0 is never linked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiting {
    intid: u32,
    physical: u32,
}

impl Waiting {
    fn lr(self) -> u64 {
        if self.physical == 0 {
            pending_lr(self.intid, DEFAULT_PRIORITY)
        } else {
            pending_hw_lr(self.intid, self.physical, DEFAULT_PRIORITY)
        }
    }
}

/// Virtual interrupts waiting for a list register, in arrival order.
#[derive(Default)]
pub struct VirqQueue {
    waiting: Deque<Waiting, QUEUE_CAPACITY>,
}

impl VirqQueue {
    pub fn new() -> Self {
        VirqQueue {
            waiting: Deque::new(),
        }
    }

    /// Queues one delivery of `intid`.
    pub fn push(&mut self, intid: u32) -> Result<(), QueueFull> {
        self.waiting
            .push_back(Waiting { intid, physical: 0 })
            .map_err(|_| QueueFull)
    }

    /// Queues `intid` unless it is already waiting (level-style sources such as the timer).
    pub fn push_unique(&mut self, intid: u32) -> Result<(), QueueFull> {
        if self.waiting.iter().any(|w| w.intid == intid) {
            return Ok(());
        }
        self.push(intid)
    }

    /// Queues virtual `intid` linked to physical `physical` (hardware bit): the guest's
    /// deactivation of it deactivates the physical interrupt.
    pub fn push_hw(&mut self, intid: u32, physical: u32) -> Result<(), QueueFull> {
        self.waiting
            .push_back(Waiting { intid, physical })
            .map_err(|_| QueueFull)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    /// Moves waiting interrupts into free list registers. An INTID already present in a list
    /// register (pending or active) is not placed twice; that list register gets [`LR_EOI`] so
    /// the guest's EOI of the first copy brings the hypervisor back. Free list registers are
    /// zeroed (clearing a spent EOI request, which would otherwise keep the maintenance interrupt
    /// asserted). Returns true when an interrupt waits for lack of a free list register: the
    /// caller then asks for the underflow maintenance interrupt.
    pub fn refill(&mut self, lrs: &mut [u64]) -> bool {
        for lr in lrs.iter_mut().filter(|lr| lr_is_free(**lr)) {
            *lr = 0;
        }
        let mut out_of_registers = false;
        let mut remaining = self.waiting.len();
        while remaining > 0 {
            remaining -= 1;
            let Some(virq) = self.waiting.pop_front() else {
                break;
            };
            if let Some(holder) = lrs
                .iter_mut()
                .find(|lr| !lr_is_free(**lr) && lr_intid(**lr) == virq.intid)
            {
                // In a hardware list register bit 41 is part of the physical INTID; its second
                // copy simply waits for the next refill after the guest's deactivation.
                if *holder & LR_HW == 0 {
                    *holder |= LR_EOI;
                }
            } else if let Some(slot) = lrs.iter_mut().find(|lr| lr_is_free(**lr)) {
                *slot = virq.lr();
                continue;
            } else {
                out_of_registers = true;
            }
            // Keeps the order of what could not be placed.
            let _ = self.waiting.push_back(virq);
        }
        out_of_registers
    }

    /// Forgets every waiting and listed interrupt of a vCPU that is being reset or switched off,
    /// and returns the physical INTIDs linked to them. Each of those was only priority-dropped
    /// when the hypervisor took it: the caller must deactivate them, or the physical line stays
    /// active and never fires again (for the device's owner, after any CPU_OFF/CPU_ON cycle).
    pub fn take_hardware(&mut self, lrs: &mut [u64]) -> heapless::Vec<u32, HW_RELEASE_MAX> {
        let mut physical: heapless::Vec<u32, HW_RELEASE_MAX> = heapless::Vec::new();
        let mut note = |pintid: u32| {
            if !physical.contains(&pintid) {
                // At most one entry per distinct INTID; the capacity covers every SPI a VM can
                // be given, so nothing is dropped.
                let _ = physical.push(pintid);
            }
        };
        for lr in lrs.iter_mut() {
            if !lr_is_free(*lr) && *lr & LR_HW != 0 {
                note(((*lr & LR_PINTID_MASK) >> LR_PINTID_SHIFT) as u32);
            }
            *lr = 0;
        }
        for waiting in self.waiting.iter().filter(|w| w.physical != 0) {
            note(waiting.physical);
        }
        self.waiting.clear();
        physical
    }

    /// True when `lrs` or the queue hold an interrupt the guest has not taken yet, i.e. a WFI
    /// must not block.
    pub fn has_pending(&self, lrs: &[u64]) -> bool {
        !self.waiting.is_empty() || lrs.iter().any(|&lr| lr & LR_STATE_PENDING != 0)
    }
}

/// What one pCPU's virtual interface registers hold, as far as that pCPU last wrote or read
/// them, so that a switch touches only the registers that must change (`arch::gic` keeps one
/// per pCPU). Under QEMU every ICH_*_EL2 access is a helper call that takes QEMU's big lock (the
/// registers are `ARM_CP_IO`) and recomputes the virtual interrupt lines: a switch that read
/// and wrote all of them made 19 such calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceMirror {
    /// Bit i set: list register i may hold a non-zero value (written non-zero and not zeroed
    /// since; the hardware changes an LR's state, never an LR written as zero).
    live_lrs: u8,
    /// ICH_HCR_EL2, ICH_VMCR_EL2, ICH_AP1R0_EL2 (`None`: not known yet).
    hcr: Option<u64>,
    vmcr: Option<u64>,
    ap1r0: Option<u64>,
}

/// The list registers a mirror tracks (QEMU's GIC has four).
pub const MIRRORED_LRS: usize = 4;

impl InterfaceMirror {
    /// A pCPU's interface at reset: list registers zero, the rest not known.
    pub const RESET: InterfaceMirror = InterfaceMirror {
        live_lrs: 0,
        hcr: None,
        vmcr: None,
        ap1r0: None,
    };

    /// The list registers a save must read (bit i: LR i); the others are zero.
    pub fn lrs_to_read(&self) -> u8 {
        self.live_lrs
    }

    /// The list registers an emptying must zero; none is live afterwards.
    pub fn empty_lrs(&mut self) -> u8 {
        core::mem::take(&mut self.live_lrs)
    }

    /// The list registers to write to program `lrs`: the non-zero ones, and the live ones that
    /// must become zero.
    pub fn lrs_to_write(&mut self, lrs: &[u64; MIRRORED_LRS]) -> u8 {
        let now_live = lrs
            .iter()
            .enumerate()
            .filter(|(_, &lr)| lr != 0)
            .fold(0u8, |mask, (i, _)| mask | 1 << i);
        let write = now_live | self.live_lrs;
        self.live_lrs = now_live;
        write
    }

    /// Whether HCR must be written to hold `value` (and records that it will).
    pub fn hcr_write(&mut self, value: u64) -> bool {
        needs_write(&mut self.hcr, value)
    }

    /// Whether VMCR must be written to hold `value` (and records that it will).
    pub fn vmcr_write(&mut self, value: u64) -> bool {
        needs_write(&mut self.vmcr, value)
    }

    /// Whether AP1R0 must be written to hold `value` (and records that it will).
    pub fn ap1r0_write(&mut self, value: u64) -> bool {
        needs_write(&mut self.ap1r0, value)
    }

    /// VMCR and AP1R0 as a save read them (the guest changes both without trapping).
    pub fn read_back(&mut self, vmcr: u64, ap1r0: u64) {
        self.vmcr = Some(vmcr);
        self.ap1r0 = Some(ap1r0);
    }
}

fn needs_write(slot: &mut Option<u64>, value: u64) -> bool {
    let changed = *slot != Some(value);
    *slot = Some(value);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guest does: take the highest-priority pending LR and EOI it (state → invalid).
    fn guest_takes_one(lrs: &mut [u64]) -> Option<u32> {
        let slot = lrs.iter_mut().find(|lr| **lr & LR_STATE_PENDING != 0)?;
        let intid = lr_intid(*slot);
        *slot = 0;
        Some(intid)
    }

    #[test]
    fn more_interrupts_than_list_registers_are_all_delivered_once() {
        let mut queue = VirqQueue::new();
        for intid in 0..10 {
            queue.push(intid).unwrap();
        }
        let mut lrs = [0u64; 4];
        let mut delivered = Vec::new();
        let mut needs_underflow = queue.refill(&mut lrs);
        assert!(
            needs_underflow,
            "10 interrupts cannot fit in 4 list registers"
        );
        while let Some(intid) = guest_takes_one(&mut lrs) {
            delivered.push(intid);
            // The maintenance interrupt (or the next entry) refills.
            needs_underflow = queue.refill(&mut lrs);
        }
        assert!(!needs_underflow);
        delivered.sort();
        assert_eq!(delivered, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn repeated_intid_waits_for_the_eoi_of_the_first() {
        let mut queue = VirqQueue::new();
        queue.push(5).unwrap();
        queue.push(5).unwrap();
        let mut lrs = [0u64; 4];
        assert!(
            !queue.refill(&mut lrs),
            "no underflow request: that could trap the guest forever"
        );
        assert_eq!(queue.len(), 1, "second 5 must wait");
        assert_eq!(lrs.iter().filter(|&&lr| !lr_is_free(lr)).count(), 1);
        assert_ne!(
            lrs[0] & LR_EOI,
            0,
            "EOI of the first copy must bring the hypervisor back"
        );
        assert_eq!(guest_takes_one(&mut lrs), Some(5));
        assert!(!queue.refill(&mut lrs));
        assert_eq!(guest_takes_one(&mut lrs), Some(5));
        assert_eq!(guest_takes_one(&mut lrs), None);
    }

    #[test]
    fn active_interrupt_blocks_a_second_copy() {
        let mut queue = VirqQueue::new();
        let mut lrs = [LR_STATE_ACTIVE | LR_GROUP1 | 27, 0, 0, 0];
        queue.push(27).unwrap();
        assert!(!queue.refill(&mut lrs));
        assert_eq!(lrs[1], 0);
        assert_eq!(lrs[0], LR_STATE_ACTIVE | LR_GROUP1 | LR_EOI | 27);
        // The guest deactivates it: state invalid, EOI bit still set until the next refill.
        lrs[0] &= !LR_STATE_MASK;
        assert!(!queue.refill(&mut lrs));
        assert_eq!(
            lrs[0],
            pending_lr(27, DEFAULT_PRIORITY),
            "the spent EOI request is cleared"
        );
    }

    #[test]
    fn underflow_is_requested_only_when_registers_run_out() {
        let mut queue = VirqQueue::new();
        for intid in [1, 2, 3, 4, 5] {
            queue.push(intid).unwrap();
        }
        let mut lrs = [0u64; 4];
        assert!(queue.refill(&mut lrs));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn push_unique_coalesces() {
        let mut queue = VirqQueue::new();
        queue.push_unique(27).unwrap();
        queue.push_unique(27).unwrap();
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn queue_reports_full() {
        let mut queue = VirqQueue::new();
        for _ in 0..QUEUE_CAPACITY {
            queue.push(1).unwrap();
        }
        assert_eq!(queue.push(1), Err(QueueFull));
    }

    #[test]
    fn pending_detection_sees_queue_and_list_registers() {
        let mut queue = VirqQueue::new();
        assert!(!queue.has_pending(&[0; 4]));
        assert!(queue.has_pending(&[pending_lr(3, 0xa0), 0, 0, 0]));
        assert!(!queue.has_pending(&[LR_STATE_ACTIVE | 3, 0, 0, 0]));
        queue.push(4).unwrap();
        assert!(queue.has_pending(&[0; 4]));
    }

    #[test]
    fn hardware_interrupts_carry_the_physical_intid_and_never_an_eoi_request() {
        let mut queue = VirqQueue::new();
        queue.push_hw(48, 37).unwrap();
        let mut lrs = [0u64; 4];
        assert!(!queue.refill(&mut lrs));
        assert_eq!(lrs[0], pending_hw_lr(48, 37, DEFAULT_PRIORITY));
        assert_eq!(lrs[0] >> 61 & 1, 1, "HW bit");
        assert_eq!((lrs[0] >> 32) & 0x3ff, 37, "pINTID");
        assert_eq!(lr_intid(lrs[0]), 48);
        // A second copy while the first is active: no EOI bit (it would corrupt pINTID).
        lrs[0] = (lrs[0] & !LR_STATE_MASK) | LR_STATE_ACTIVE;
        queue.push_hw(48, 37).unwrap();
        assert!(!queue.refill(&mut lrs));
        assert_eq!((lrs[0] >> 32) & 0x3ff, 37);
        assert_eq!(queue.len(), 1, "the second copy waits");
        lrs[0] &= !LR_STATE_MASK;
        assert!(!queue.refill(&mut lrs));
        assert_eq!(lrs[0], pending_hw_lr(48, 37, DEFAULT_PRIORITY));
    }

    #[test]
    fn a_reset_vcpu_hands_back_every_physical_interrupt_it_held_once() {
        let mut queue = VirqQueue::new();
        queue.push(3).unwrap();
        queue.push_hw(48, 37).unwrap();
        queue.push_hw(48, 37).unwrap();
        let mut lrs = [
            (pending_hw_lr(48, 37, DEFAULT_PRIORITY) & !LR_STATE_MASK) | LR_STATE_ACTIVE,
            pending_hw_lr(49, 40, DEFAULT_PRIORITY),
            pending_lr(27, DEFAULT_PRIORITY),
            // Spent (invalid) hardware list register: the guest already deactivated it.
            pending_hw_lr(50, 41, DEFAULT_PRIORITY) & !LR_STATE_MASK,
        ];
        let mut released = queue.take_hardware(&mut lrs).to_vec();
        released.sort();
        assert_eq!(released, [37, 40]);
        assert_eq!(lrs, [0; 4]);
        assert!(queue.is_empty());
        // Nothing held: nothing to hand back.
        assert!(queue.take_hardware(&mut lrs).is_empty());
    }

    #[test]
    fn list_register_encoding() {
        let lr = pending_lr(27, 0xa0);
        assert_eq!(lr >> 62, 0b01);
        assert_eq!((lr >> 60) & 1, 1);
        assert_eq!((lr >> 48) & 0xff, 0xa0);
        assert_eq!(lr_intid(lr), 27);
    }

    #[test]
    fn a_mirror_writes_only_what_differs_and_reads_only_live_list_registers() {
        let mut m = InterfaceMirror::RESET;
        // Nothing known: the first restore writes every register; its list registers as set.
        let lrs = [pending_lr(27, 0x80), 0, pending_lr(48, 0xa0), 0];
        assert_eq!(m.lrs_to_write(&lrs), 0b0101);
        assert!(m.vmcr_write(0xf0) && m.ap1r0_write(0) && m.hcr_write(1));
        // The same again: the non-zero list registers are written again (the vCPU's state, which
        // the hardware may have moved on since), nothing else.
        assert_eq!(
            m.lrs_to_write(&lrs),
            0b0101,
            "non-zero LRs are always written"
        );
        assert!(!m.vmcr_write(0xf0) && !m.ap1r0_write(0) && !m.hcr_write(1));
        // A save reads the live ones only; what it read of VMCR/AP1R0 becomes known.
        assert_eq!(m.lrs_to_read(), 0b0101);
        m.read_back(0xf1, 0x8000_0000);
        assert!(!m.vmcr_write(0xf1) && !m.ap1r0_write(0x8000_0000));
        // A refill that empties LR 2 and fills LR 1 writes all three, and only 0 and 1 stay live.
        let refill = [lrs[0], pending_lr(30, 0x80), 0, 0];
        assert_eq!(m.lrs_to_write(&refill), 0b0111);
        assert_eq!(m.lrs_to_read(), 0b0011);
        // Emptying zeroes the live ones; afterwards none is read, and a restore of nothing
        // writes nothing.
        assert_eq!(m.empty_lrs(), 0b0011);
        assert_eq!((m.lrs_to_read(), m.empty_lrs()), (0, 0));
        assert_eq!(m.lrs_to_write(&[0; MIRRORED_LRS]), 0);
        // HCR: a change is written once.
        assert!(m.hcr_write(3));
        assert!(!m.hcr_write(3));
        assert!(m.hcr_write(1));
    }
}
