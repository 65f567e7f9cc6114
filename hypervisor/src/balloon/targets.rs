//! Balloon targets (issue 16): how much memory the hypervisor wants each VM to have, in pages,
//! set by the VM's `balloon_schedule` points and by driver domains' BALLOON_SET_TARGET (the
//! rules are `shared_abi::balloon`'s "Targets"). The record is by VM id and outlives an
//! incarnation: a restarted VM keeps its target and the rest of its schedule.
//!
//! Pure logic, host-tested: the running hypervisor keeps a [`Targets`] behind a lock
//! (`ballooning.rs`) and applies due points on trap exit.

use shared_abi::balloon::{target_in_range, Schedule};
use shared_abi::hypercall::Status;
use shared_abi::layout::MAX_VMS;

/// One VM's target and schedule.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmTarget {
    /// The target in pages; `None` until a point or a command sets one: its RAM from the
    /// topology.
    pages: Option<u64>,
    schedule: Schedule,
    /// The first point of `schedule` not applied yet.
    next: usize,
    /// The target changed and the VM has not been told yet (TARGET_INTID).
    pub notify: bool,
}

impl VmTarget {
    /// The target, given the VM's RAM from the topology in pages.
    pub fn pages(&self, ram_pages: u64) -> u64 {
        self.pages.unwrap_or(ram_pages)
    }

    /// When its next point is due (ms from the start), if it has one left.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.schedule.points().get(self.next).map(|p| p.at_ms)
    }

    /// Applies every point due at `now_ms` (the last one wins); true if the target changed.
    pub fn apply_due(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        // Bounded by the schedule's length (at most MAX_SCHEDULE_POINTS).
        while let Some(point) = self.schedule.points().get(self.next) {
            if point.at_ms > now_ms {
                break;
            }
            self.next += 1;
            changed |= self.set(point.pages);
        }
        changed
    }

    /// Sets the target; true if it changed (and the VM is then to be told).
    pub fn set(&mut self, pages: u64) -> bool {
        let changed = self.pages != Some(pages);
        self.pages = Some(pages);
        self.notify |= changed;
        changed
    }
}

/// Every VM's target, by VM id (index 0, the hypervisor, is unused).
#[derive(Debug)]
pub struct Targets {
    vms: [VmTarget; MAX_VMS + 1],
    /// The schedules were loaded and the clock started.
    pub started: bool,
    /// When the clock started (counter ticks).
    pub start_ticks: u64,
}

impl Default for Targets {
    fn default() -> Self {
        Self::new()
    }
}

impl Targets {
    pub const fn new() -> Targets {
        Targets {
            vms: [VmTarget {
                pages: None,
                schedule: Schedule::EMPTY,
                next: 0,
                notify: false,
            }; MAX_VMS + 1],
            started: false,
            start_ticks: 0,
        }
    }

    /// VM `id`'s record; `None` for an id out of range.
    pub fn get(&self, id: u16) -> Option<&VmTarget> {
        self.vms.get(usize::from(id)).filter(|_| id != 0)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut VmTarget> {
        self.vms.get_mut(usize::from(id)).filter(|_| id != 0)
    }

    /// Gives VM `id` its schedule (at the start).
    pub fn load(&mut self, id: u16, schedule: Schedule) {
        if let Some(vm) = self.get_mut(id) {
            vm.schedule = schedule;
            vm.next = 0;
        }
    }

    /// The earliest point still to apply, in ms from the start, of any VM.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.vms.iter().filter_map(VmTarget::next_due_ms).min()
    }
}

/// A VM's memory and target, in pages, for BALLOON_SET_TARGET's free-memory rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmMemory {
    pub pages: u64,
    pub target: u64,
}

/// The balloon's free memory for a new target: the credit, plus what VMs above their targets
/// still have to give, minus what VMs below their targets still have to take (`others`: every
/// live VM but the one whose target is being set).
pub fn free_for_targets(credit: u64, others: impl IntoIterator<Item = VmMemory>) -> u64 {
    let (mut to_give, mut to_take) = (0u64, 0u64);
    for vm in others {
        to_give = to_give.saturating_add(vm.pages.saturating_sub(vm.target));
        to_take = to_take.saturating_add(vm.target.saturating_sub(vm.pages));
    }
    credit.saturating_add(to_give).saturating_sub(to_take)
}

/// BALLOON_SET_TARGET's rules, in order: the caller is a driver domain (else `Denied`); `vm`
/// is a live VM (else `InvalidArgument`); `pages` is in `FLOOR_BYTES..=MAX_TARGET_BYTES`
/// (else `InvalidArgument`); the growth beyond its memory now fits in `free` (see
/// [`free_for_targets`], else `NoSpace`).
pub fn check_set_target(
    caller_is_driver_domain: bool,
    vm: Option<VmMemory>,
    pages: u64,
    free: u64,
) -> Status {
    if !caller_is_driver_domain {
        return Status::Denied;
    }
    let Some(vm) = vm else {
        return Status::InvalidArgument;
    };
    if !target_in_range(pages) {
        return Status::InvalidArgument;
    }
    if pages.saturating_sub(vm.pages) > free {
        return Status::NoSpace;
    }
    Status::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::balloon::parse_schedule;

    const MIB: u64 = 256;

    #[test]
    fn points_apply_when_due_and_the_last_due_wins() {
        let mut t = VmTarget {
            schedule: parse_schedule("100:16,200:32,300:64").unwrap(),
            ..VmTarget::default()
        };
        assert_eq!(t.pages(144 * MIB), 144 * MIB);
        assert_eq!(t.next_due_ms(), Some(100));
        assert!(!t.apply_due(99));
        assert!(!t.notify);
        assert!(t.apply_due(250));
        assert_eq!(t.pages(144 * MIB), 32 * MIB);
        assert!(t.notify);
        assert_eq!(t.next_due_ms(), Some(300));
        assert!(t.apply_due(10_000));
        assert_eq!(t.next_due_ms(), None);
        assert!(!t.apply_due(20_000));
        assert_eq!(t.pages(0), 64 * MIB);
    }

    #[test]
    fn setting_the_same_target_again_tells_nobody() {
        let mut t = VmTarget::default();
        assert!(t.set(16 * MIB));
        t.notify = false;
        assert!(!t.set(16 * MIB));
        assert!(!t.notify);
    }

    #[test]
    fn the_table_answers_the_earliest_point_and_refuses_id_zero() {
        let mut all = Targets::new();
        all.load(2, parse_schedule("500:16").unwrap());
        all.load(3, parse_schedule("300:16,900:8").unwrap());
        assert_eq!(all.next_due_ms(), Some(300));
        assert!(all.get(0).is_none());
        assert!(all.get(MAX_VMS as u16 + 1).is_none());
        assert!(all.get_mut(3).unwrap().apply_due(300));
        assert_eq!(all.next_due_ms(), Some(500));
    }

    #[test]
    fn free_memory_counts_promised_gives_and_takes() {
        let giver = VmMemory {
            pages: 144 * MIB,
            target: 16 * MIB,
        };
        let taker = VmMemory {
            pages: 8 * MIB,
            target: 40 * MIB,
        };
        assert_eq!(free_for_targets(0, [giver]), 128 * MIB);
        assert_eq!(free_for_targets(10, [giver, taker]), 96 * MIB + 10);
        assert_eq!(free_for_targets(0, [taker]), 0);
    }
}
