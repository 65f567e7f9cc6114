//! The memory balloon: how a running VM gives pages of its memory back to the hypervisor and
//! how another asks for them (the lecture's balloon; Xen's decrease_reservation and
//! populate_physmap, with virtio-balloon's batching).
//!
//! This module owns the ABI's constants; the hypercalls are in
//! [`hypercall`](crate::hypercall) (`BALLOON_RELEASE`, `BALLOON_POPULATE`, `BALLOON_INFO`), the
//! rules in the hypervisor (`hypervisor/src/balloon.rs`).
//!
//! # Memory a VM may have
//!
//! A VM's memory lives in its memory window, [`WINDOW`]: its RAM from the topology at the bottom
//! (`GUEST_RAM_BASE ..+ ram_bytes`), and any page above it or in a hole it gave back that the
//! balloon populates. Guests map the whole window as Normal memory at stage 1 already (it is
//! the first Normal gigabyte), so a populated page is usable at once.
//!
//! # Giving back (inflate)
//!
//! `BALLOON_RELEASE(x1 = array GPA, x2 = count)`: the array holds `count` (`1..=`[`MAX_BATCH`])
//! little-endian `u64` GPAs of pages the caller gives back; it lies 8-byte aligned in the
//! caller's RAM. The hypervisor reads the whole array once, then takes each page in order: it
//! unmaps it from the caller's stage 2 (splitting a 2 MiB block with break-before-make),
//! invalidates the TLBs (and the SMMU's for a VM that owns a device), scrubs it, and adds it to
//! the balloon's credit. It stops at the first page it refuses; x0 is that page's status (`Ok`
//! when all were taken) and x1 how many pages were taken. A page is refused with
//! - `InvalidArgument`: not page aligned, outside the window, or not memory the caller has;
//! - `Busy`: the hypervisor or a peer uses it: the start-info page, the event page, a page of the
//!   grant table, a frame a peer maps through a grant;
//! - `Denied`: the caller would keep less than [`FLOOR_BYTES`].
//!
//! A page given back is gone: touching it is a stage-2 fault, and the VM is killed with a
//! reason naming the balloon. Hypercalls that name guest memory (grant tables, event pages, copy
//! buffers) refuse given-back pages and populated ones alike: only the VM's own RAM from the
//! topology, minus what it gave back, is memory the hypervisor reads or writes for it.
//!
//! # Asking for more (deflate)
//!
//! `BALLOON_POPULATE(x1 = array GPA, x2 = count)`: the array, as above, holds the GPAs where the
//! caller wants new pages: each page aligned, inside [`WINDOW`], and not mapped now (a hole it
//! gave back, or above its RAM). Each page populated is zeroed. Pages come only from the
//! balloon's credit, i.e. what VMs gave back (or what populated pages of a stopped VM returned):
//! the balloon moves memory between VMs, it never hands out the hypervisor's reserve. It stops at
//! the first page it cannot populate: `InvalidArgument` for a bad GPA, `NoSpace` when the credit
//! (or free memory) is exhausted, so a VM asking for more than is free gets what is free and
//! that status. x1 is how many pages were populated.
//!
//! `BALLOON_INFO`: x1 = the caller's memory now, in pages; x2 = the balloon's credit, in pages.
//!
//! # Targets
//!
//! The hypervisor holds a **target** per VM, in pages: how much memory the VM should have. A
//! VM starts with its RAM from the topology as its target. It changes at the points of the
//! VM's `balloon_schedule` setting ([`parse_schedule`]: `"ms:MiB,..."`, times from boot, at
//! most [`MAX_SCHEDULE_POINTS`] points up to [`MAX_SCHEDULE_MS`], each target in
//! [`FLOOR_BYTES`]`..=`[`MAX_TARGET_BYTES`]), which the hypervisor applies on the next trap
//! exit after each point is due, or when a driver domain sets it with `BALLOON_SET_TARGET`
//! (its `balloon_control` setting, [`parse_control`], is a schedule of such commands: there is
//! no run-time user channel yet). Each change raises
//! [`TARGET_INTID`](crate::layout::intid::TARGET_INTID) in the VM, which reads its target
//! with `BALLOON_TARGET` and gives or takes memory towards it (the guest driver works in
//! steps of [`FOLLOW_STEP_BYTES`]). The target is a request, not a limit: the hypervisor never
//! takes memory a VM does not give. A restarted VM gets its RAM from the topology as its target
//! again, until the next point of its schedule.
//!
//! `BALLOON_SET_TARGET(x1 = VM id, x2 = target in pages)`: a driver domain only (`Denied` for
//! any other caller, not logged, so a guest cannot flood the log). `InvalidArgument` for an id
//! that names no live VM or a target outside `FLOOR_BYTES..=MAX_TARGET_BYTES` in pages.
//! `NoSpace` when the growth cannot be met: a target above the VM's memory now needs the
//! difference from the balloon's **free memory**, which is the credit (counting the frames of
//! batches in flight between the hypervisor's two lock holds), plus what VMs above
//! their own targets still have to give, minus what VMs below their own targets still have to
//! take. So "shrink A, then grow B by as much" is accepted before A has given anything, and
//! "grow B" alone, with nothing in the credit, is `NoSpace`.
//!
//! # Stopping
//!
//! A VM that stops or restarts frees its memory as it stands: its RAM minus what it gave back
//! goes to the hypervisor's free memory, its populated pages back to the balloon's credit. A
//! restarted VM boots with its RAM from the topology, whole (in fresh frames if it had given
//! pages back).

use crate::layout::{GUEST_RAM_BASE, MAX_VM_RAM, PAGE_SIZE};

/// Most pages one BALLOON_RELEASE or BALLOON_POPULATE takes: one page of GPAs.
pub const MAX_BATCH: u64 = 512;

/// Memory a VM always keeps: BALLOON_RELEASE refuses (`Denied`) to go below it.
pub const FLOOR_BYTES: u64 = 4 << 20;

/// `[start, end)` of the guest-physical range a VM's memory may occupy.
pub const WINDOW: (u64, u64) = (GUEST_RAM_BASE, GUEST_RAM_BASE + MAX_VM_RAM);

const _: () = assert!(MAX_BATCH * 8 == crate::layout::PAGE_SIZE);

/// The largest target a VM may be given: the whole window.
pub const MAX_TARGET_BYTES: u64 = MAX_VM_RAM;

/// The setting holding a VM's target schedule (`"ms:MiB,..."`).
pub const SCHEDULE_KEY: &str = "balloon_schedule";
/// The driver-domain setting holding its SET_TARGET commands (`"ms:vm:MiB,..."`).
pub const CONTROL_KEY: &str = "balloon_control";
/// Most points of one schedule (and commands of one control schedule).
pub const MAX_SCHEDULE_POINTS: usize = 16;
/// Latest time of a point, in ms from boot: one hour.
pub const MAX_SCHEDULE_MS: u64 = 3_600_000;
/// How much a guest gives or takes in one step while it follows its target.
pub const FOLLOW_STEP_BYTES: u64 = 16 << 20;

/// True if `pages` is a target a VM may have: `FLOOR_BYTES..=MAX_TARGET_BYTES`.
pub const fn target_in_range(pages: u64) -> bool {
    pages >= FLOOR_BYTES / PAGE_SIZE && pages <= MAX_TARGET_BYTES / PAGE_SIZE
}

/// One point of a schedule: from `at_ms` after boot, the target is `pages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulePoint {
    pub at_ms: u64,
    /// The target, in pages (the setting gives MiB).
    pub pages: u64,
    /// For a control command: the VM id whose target it sets (0 in a VM's own schedule).
    pub vm: u16,
}

/// A parsed schedule: up to [`MAX_SCHEDULE_POINTS`] points, times strictly rising.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    points: [SchedulePoint; MAX_SCHEDULE_POINTS],
    len: usize,
}

impl Schedule {
    /// No points.
    pub const EMPTY: Schedule = Schedule {
        points: [SchedulePoint {
            at_ms: 0,
            pages: 0,
            vm: 0,
        }; MAX_SCHEDULE_POINTS],
        len: 0,
    };

    pub fn points(&self) -> &[SchedulePoint] {
        self.points.get(..self.len).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why a `balloon_schedule` or `balloon_control` value is refused. `point` counts from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedule is empty")]
    Empty,
    #[error("more than {MAX_SCHEDULE_POINTS} points")]
    TooManyPoints,
    #[error("point {point} is not {shape} (decimal numbers)")]
    BadPoint { point: usize, shape: &'static str },
    #[error("point {point}: {ms} ms is after {MAX_SCHEDULE_MS} ms (one hour)")]
    TooLate { point: usize, ms: u64 },
    #[error("point {point}: {ms} ms does not come after the point before it")]
    NotRising { point: usize, ms: u64 },
    #[error(
        "point {point}: a target of {mib} MiB is outside {}..={} MiB",
        FLOOR_BYTES >> 20,
        MAX_TARGET_BYTES >> 20
    )]
    TargetOutOfRange { point: usize, mib: u64 },
    #[error("point {point}: VM id {vm} is not 1..={}", crate::layout::MAX_VMS)]
    BadVm { point: usize, vm: u64 },
}

/// A decimal number: digits only (no sign, no spaces inside), at most 10 of them, so no
/// overflow can follow from any input.
fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses the points of `text` (comma separated), each split on ':' into `fields` numbers,
/// checking count, times and shapes; `point` turns the numbers into a point.
fn parse_points<const N: usize>(
    text: &str,
    shape: &'static str,
    mut point: impl FnMut(usize, [u64; N]) -> Result<SchedulePoint, ScheduleError>,
) -> Result<Schedule, ScheduleError> {
    let mut schedule = Schedule::default();
    if text.trim().is_empty() {
        return Err(ScheduleError::Empty);
    }
    for (index, item) in text.split(',').enumerate() {
        if index >= MAX_SCHEDULE_POINTS {
            return Err(ScheduleError::TooManyPoints);
        }
        let bad = ScheduleError::BadPoint {
            point: index,
            shape,
        };
        let mut fields = [0u64; N];
        let mut parts = item.split(':');
        for field in fields.iter_mut() {
            *field = parts.next().and_then(number).ok_or(bad)?;
        }
        if parts.next().is_some() {
            return Err(bad);
        }
        let ms = fields[0];
        if ms > MAX_SCHEDULE_MS {
            return Err(ScheduleError::TooLate { point: index, ms });
        }
        if index > 0 && schedule.points[index - 1].at_ms >= ms {
            return Err(ScheduleError::NotRising { point: index, ms });
        }
        schedule.points[index] = point(index, fields)?;
        schedule.len = index + 1;
    }
    Ok(schedule)
}

/// MiB to pages, if it is a target in range.
fn target_pages(point: usize, mib: u64) -> Result<u64, ScheduleError> {
    let pages = mib.saturating_mul((1 << 20) / PAGE_SIZE);
    if target_in_range(pages) {
        Ok(pages)
    } else {
        Err(ScheduleError::TargetOutOfRange { point, mib })
    }
}

/// A VM's `balloon_schedule`: `"ms:MiB,..."`, e.g. `"2000:16,6000:144"`: 2 s after boot the
/// VM should have 16 MiB, at 6 s 144 MiB again. The topology tool and the bundle parser both
/// refuse a bad one.
pub fn parse_schedule(text: &str) -> Result<Schedule, ScheduleError> {
    parse_points::<2>(text, "ms:MiB", |point, [ms, mib]| {
        Ok(SchedulePoint {
            at_ms: ms,
            pages: target_pages(point, mib)?,
            vm: 0,
        })
    })
}

/// A driver domain's `balloon_control`: `"ms:vm:MiB,..."`, e.g. `"1000:2:16,1500:3:136"`: at
/// 1 s it sets VM 2's target to 16 MiB, at 1.5 s VM 3's to 136 MiB (BALLOON_SET_TARGET).
/// Only the shape is checked (VM ids `1..=MAX_VMS`, any MiB below 2^32): whether a target is
/// acceptable is the hypervisor's to answer when the command runs.
pub fn parse_control(text: &str) -> Result<Schedule, ScheduleError> {
    parse_points::<3>(text, "ms:vm:MiB", |point, [ms, vm, mib]| {
        let id = u16::try_from(vm)
            .ok()
            .filter(|&id| id != 0 && usize::from(id) <= crate::layout::MAX_VMS)
            .ok_or(ScheduleError::BadVm { point, vm })?;
        Ok(SchedulePoint {
            at_ms: ms,
            pages: mib.saturating_mul((1 << 20) / PAGE_SIZE),
            vm: id,
        })
    })
}

#[cfg(test)]
mod tests;
