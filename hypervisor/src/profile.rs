//! The guest-PC sampling profiler's histogram (issue 11): where each sample found a pCPU (a
//! VM's vCPU at some PC, the idle loop, or the hypervisor), aggregated in fixed memory, and the
//! report lines printed from it (`shared_abi::profile` has their format and the setting).
//!
//! One [`Histogram`] per pCPU, written only by its pCPU's sample (under its own lock, which the
//! print also takes), so samples never contend. A full histogram keeps counting the VM's
//! samples and counts the PC as overflow: never a panic, never a larger table.
//! [`report`] merges the pCPUs' histograms per VM and prints each VM's top
//! [`TOP_PCS`](shared_abi::profile::TOP_PCS) PCs.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use heapless::index_map::FnvIndexMap;
use shared_abi::layout::MAX_VMS;
use shared_abi::profile::{LINE_PREFIX, TOP_PCS};

/// Distinct (VM, PC, EL) entries one pCPU's histogram holds between two prints.
pub const CAPACITY: usize = 2048;

/// Where a sample found its pCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// Running VM `vm`'s vCPU at `pc` (the interrupted instruction), at EL0 if `el0`.
    Guest { vm: u16, pc: u64, el0: bool },
    /// Sleeping in the idle loop.
    Idle,
    /// Spinning in a halted vCPU's halt poll (EL2, interrupts masked, waiting for work: idle
    /// time in the accounting).
    HaltPoll,
    /// In the hypervisor (handling a trap, switching) with interrupts masked.
    Hypervisor,
    /// Taken so late that the pCPU had left EL2 for a guest and trapped again since it was
    /// due: where it was then (a guest, or the hypervisor) is not known. Under QEMU a timer
    /// interrupt can come hundreds of microseconds late while the host is busy.
    Late,
}

/// Where a sample due at `due` found a pCPU that was neither in a guest nor asleep then: in
/// its last halt poll (`poll`, counter ticks), in the hypervisor if its stay in EL2 that began
/// at `el2_since` was under way, else [`Where::Late`] (it was due before that stay began).
pub fn place_in_el2(due: u64, el2_since: u64, poll: core::ops::RangeInclusive<u64>) -> Where {
    if poll.contains(&due) {
        Where::HaltPoll
    } else if due >= el2_since {
        Where::Hypervisor
    } else {
        Where::Late
    }
}

/// The key of a PC entry: the PC with bit 0 set for EL0 (A64 PCs are 4-byte aligned).
fn key(pc: u64, el0: bool) -> u64 {
    (pc & !1) | u64::from(el0)
}

/// One pCPU's samples since the last print.
pub struct Histogram {
    pcs: FnvIndexMap<(u16, u64), u32, CAPACITY>,
    /// Per VM id: all its samples, those at EL0, those whose PC found the table full.
    samples: [u64; MAX_VMS + 1],
    el0: [u64; MAX_VMS + 1],
    overflow: [u64; MAX_VMS + 1],
    idle: u64,
    poll: u64,
    hyp: u64,
    late: u64,
    /// Whole periods that passed without a sample (the timer was taken late: in EL2 with
    /// interrupts masked, or QEMU late).
    missed: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            pcs: FnvIndexMap::new(),
            samples: [0; MAX_VMS + 1],
            el0: [0; MAX_VMS + 1],
            overflow: [0; MAX_VMS + 1],
            idle: 0,
            poll: 0,
            hyp: 0,
            late: 0,
            missed: 0,
        }
    }

    /// `n` sampling periods passed without a sample.
    pub fn missed(&mut self, n: u64) {
        self.missed = self.missed.saturating_add(n);
    }

    /// Counts one sample. A VM id outside `1..=MAX_VMS` counts as the hypervisor's (it cannot
    /// happen: ids come from the hypervisor's own table).
    pub fn record(&mut self, at: Where) {
        match at {
            Where::Idle => self.idle += 1,
            Where::HaltPoll => self.poll += 1,
            Where::Hypervisor => self.hyp += 1,
            Where::Late => self.late += 1,
            Where::Guest { vm, pc, el0 } => {
                let index = usize::from(vm);
                if vm == 0 || index > MAX_VMS {
                    self.hyp += 1;
                    return;
                }
                self.samples[index] += 1;
                self.el0[index] += u64::from(el0);
                let k = (vm, key(pc, el0));
                if let Some(n) = self.pcs.get_mut(&k) {
                    *n = n.saturating_add(1);
                } else if self.pcs.insert(k, 1).is_err() {
                    self.overflow[index] += 1;
                }
            }
        }
    }

    /// Forgets every sample (after a print).
    pub fn clear(&mut self) {
        // In place: a new histogram would be built on the (64 KiB) EL2 stack first.
        self.pcs.clear();
        self.samples.fill(0);
        self.el0.fill(0);
        self.overflow.fill(0);
        self.idle = 0;
        self.poll = 0;
        self.hyp = 0;
        self.late = 0;
        self.missed = 0;
    }

    /// Distinct PC entries held.
    pub fn entries(&self) -> usize {
        self.pcs.len()
    }
}

/// Whether a print at an accounting report may go ahead at `now` after the last one at `last`
/// (0: none yet), `gap` apart at least (counter ticks). A guest that asks for reports in a
/// loop gets at most one profile print per gap.
pub fn may_print(last: u64, now: u64, gap: u64) -> bool {
    last == 0 || now.saturating_sub(last) >= gap
}

/// One VM's merged samples.
#[derive(Default)]
struct VmProfile {
    samples: u64,
    el0: u64,
    overflow: u64,
    pcs: BTreeMap<u64, u64>,
}

/// The report lines of the pCPUs' `histograms`, tagged `tag`, for the VMs `names` (id, name;
/// samples of VMs not in it count as `lost`). `hz` and `pcpus` describe the sampling.
pub fn report<'a>(
    tag: &str,
    hz: u32,
    pcpus: usize,
    histograms: impl IntoIterator<Item = &'a Histogram>,
    names: &[(u16, String)],
) -> Vec<String> {
    let mut vms: BTreeMap<u16, VmProfile> = BTreeMap::new();
    let (mut idle, mut poll, mut hyp, mut late, mut missed) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for h in histograms {
        idle += h.idle;
        poll += h.poll;
        hyp += h.hyp;
        late += h.late;
        missed += h.missed;
        for id in 1..=MAX_VMS {
            if h.samples[id] != 0 {
                let p = vms.entry(id as u16).or_default();
                p.samples += h.samples[id];
                p.el0 += h.el0[id];
                p.overflow += h.overflow[id];
            }
        }
        for (&(vm, k), &n) in &h.pcs {
            *vms.entry(vm).or_default().pcs.entry(k).or_default() += u64::from(n);
        }
    }
    let mut lines = Vec::new();
    for (id, name) in names {
        let Some(p) = vms.remove(id) else { continue };
        let mut top: Vec<(u64, u64)> = p.pcs.into_iter().collect();
        // Most samples first; equal counts by address, so the print is deterministic.
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(TOP_PCS);
        let shown: u64 = top.iter().map(|&(_, n)| n).sum();
        lines.push(format!(
            "{LINE_PREFIX}{tag} vm={name} samples={} el0={} overflow={} shown={shown}",
            p.samples, p.el0, p.overflow
        ));
        for (k, n) in top {
            lines.push(format!(
                "{LINE_PREFIX}{tag} vm={name} pc={:#x} el={} n={n}",
                k & !1,
                if k & 1 == 1 { 0 } else { 1 }
            ));
        }
    }
    let lost: u64 = vms.values().map(|p| p.samples).sum();
    lines.push(format!(
        "{LINE_PREFIX}{tag} hz={hz} pcpus={pcpus} idle={idle} poll={poll} hyp={hyp} late={late} \
         lost={lost} missed={missed}"
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn guest(vm: u16, pc: u64) -> Where {
        Where::Guest { vm, pc, el0: false }
    }

    #[test]
    fn samples_are_counted_per_vm_pc_and_el() {
        let mut h = Histogram::new();
        h.record(guest(1, 0x4000_0100));
        h.record(guest(1, 0x4000_0100));
        h.record(Where::Guest {
            vm: 1,
            pc: 0x4000_0100,
            el0: true,
        });
        h.record(guest(2, 0x4000_0200));
        h.record(Where::Idle);
        h.record(Where::HaltPoll);
        h.record(Where::HaltPoll);
        h.record(Where::Hypervisor);
        h.record(Where::Late);
        h.record(Where::Late);
        // Ids the hypervisor never hands out count as its own, never index out of range.
        h.record(guest(0, 0x10));
        h.record(guest(MAX_VMS as u16 + 1, 0x10));
        h.record(guest(u16::MAX, 0x10));
        assert_eq!(h.entries(), 3);
        h.missed(3);
        let names = [(1, "a".to_string()), (2, "b".to_string())];
        let lines = report("7", 1000, 2, [&h], &names);
        assert_eq!(
            lines,
            [
                "profile 7 vm=a samples=3 el0=1 overflow=0 shown=3",
                "profile 7 vm=a pc=0x40000100 el=1 n=2",
                "profile 7 vm=a pc=0x40000100 el=0 n=1",
                "profile 7 vm=b samples=1 el0=0 overflow=0 shown=1",
                "profile 7 vm=b pc=0x40000200 el=1 n=1",
                "profile 7 hz=1000 pcpus=2 idle=1 poll=2 hyp=4 late=2 lost=0 missed=3",
            ]
        );
        h.clear();
        assert_eq!(h.entries(), 0);
        assert_eq!(
            report("final", 1000, 2, [&h], &names),
            ["profile final hz=1000 pcpus=2 idle=0 poll=0 hyp=0 late=0 lost=0 missed=0"]
        );
    }

    #[test]
    fn a_sample_taken_after_a_later_trap_is_late_not_the_hypervisors() {
        // The last stay in EL2 began at 1000; a halt poll spun from 1200 to 1300 in it.
        assert_eq!(place_in_el2(1250, 1000, 1200..=1300), Where::HaltPoll);
        assert_eq!(place_in_el2(1000, 1000, 1200..=1300), Where::Hypervisor);
        assert_eq!(place_in_el2(1400, 1000, 1200..=1300), Where::Hypervisor);
        // Due before that stay: the pCPU went back to a guest and trapped again meanwhile.
        assert_eq!(place_in_el2(999, 1000, 1200..=1300), Where::Late);
        // No poll yet (0..=0), no trap yet (0): the hypervisor's, as before any trap.
        assert_eq!(place_in_el2(5, 0, 0..=0), Where::Hypervisor);
    }

    #[test]
    fn a_full_histogram_counts_overflow_and_stays_bounded() {
        let mut h = Histogram::new();
        let extra = 100u64;
        for i in 0..(CAPACITY as u64 + extra) {
            h.record(guest(3, 0x4000_0000 + 4 * i));
        }
        // Known PCs still count once the table is full.
        h.record(guest(3, 0x4000_0000));
        assert_eq!(h.entries(), CAPACITY);
        let names = [(3, "c".to_string())];
        let lines = report("1", 100, 1, [&h], &names);
        assert_eq!(
            lines[0],
            format!(
                "profile 1 vm=c samples={} el0=0 overflow={extra} shown={}",
                CAPACITY as u64 + extra + 1,
                TOP_PCS + 1
            )
        );
        assert_eq!(lines[1], "profile 1 vm=c pc=0x40000000 el=1 n=2");
        // At most TOP_PCS PC lines per VM, whatever the table holds.
        assert_eq!(lines.len(), 1 + TOP_PCS + 1);
    }

    #[test]
    fn prints_at_reports_are_at_least_a_gap_apart() {
        assert!(may_print(0, 5, 1000));
        assert!(!may_print(100, 100, 1000));
        assert!(!may_print(100, 1099, 1000));
        assert!(may_print(100, 1100, 1000));
        // A counter that went backwards (another pCPU's later store) prints nothing.
        assert!(!may_print(5000, 100, 1000));
    }

    #[test]
    fn pcpus_merge_and_vms_gone_are_lost() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(guest(1, 0x100));
        b.record(guest(1, 0x100));
        b.record(guest(1, 0x104));
        b.record(guest(2, 0x200));
        b.record(Where::Idle);
        let names = [(1, "one".to_string())];
        let lines = report("9", 200, 2, [&a, &b], &names);
        assert_eq!(
            lines,
            [
                "profile 9 vm=one samples=3 el0=0 overflow=0 shown=3",
                "profile 9 vm=one pc=0x100 el=1 n=2",
                "profile 9 vm=one pc=0x104 el=1 n=1",
                "profile 9 hz=200 pcpus=2 idle=1 poll=0 hyp=0 late=0 lost=1 missed=0",
            ]
        );
    }
}
