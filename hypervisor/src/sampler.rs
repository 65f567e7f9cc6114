//! The guest-PC sampling profiler's mechanism (issue 11; the histogram is the library's
//! `hypervisor::profile`, the setting and line format `shared_abi::profile`).
//!
//! Off unless the kernel command line has `profile_hz=N`. On, each pCPU's EL2 timer is armed at
//! the earlier of its scheduling deadline and the pCPU's next sample ([`timer_deadline`]). When
//! it fires, the sample is put where the pCPU was at the moment it was due:
//! - in a guest, if the pCPU entered that guest before the due time: the guest's VM and the PC
//!   the interrupt came in at (ELR_EL2, and EL0 or EL1 from SPSR_EL2);
//! - in the idle loop, if it slept since before the due time;
//! - in a halt poll, if the pCPU's last poll (`polled`) spanned the due time: a halted vCPU
//!   spinning in EL2 for work to come back, idle time in the accounting;
//! - in the hypervisor, if it was due during the pCPU's last stay in EL2 (from the trap to the
//!   return to a guest): EL2 runs with interrupts masked, so a sample due while it handled a
//!   trap is only taken on the way out;
//! - else nowhere known ("late"): it was due before that stay began, so the pCPU left EL2
//!   for a guest and trapped again before the interrupt was taken. Under QEMU on a busy host
//!   the timer comes that late; such samples used to count as the hypervisor's.
//!
//! One sample per timer interrupt: periods missed entirely inside EL2 are not made up.
//! Off, every entry point returns after one relaxed load.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use hypervisor::profile::{self, Histogram, Where};
use log::info;
use spin::{Mutex, Once};

use crate::arch::cpu;
use crate::arch::MAX_PCPUS;

/// Counter ticks between two samples of one pCPU; 0 while profiling is off.
static PERIOD: AtomicU64 = AtomicU64::new(0);
static HZ: AtomicU32 = AtomicU32::new(0);
/// When each pCPU's next sample is due (counter ticks).
static NEXT: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];
/// When each pCPU last left EL2 for a guest (counter ticks).
static IN_GUEST_SINCE: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(0) }; MAX_PCPUS];
/// When each pCPU last trapped from a guest to EL2, and the trap before that (counter ticks).
static IN_EL2_SINCE: [(AtomicU64, AtomicU64); MAX_PCPUS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_PCPUS];
/// Each pCPU's last halt poll: from, to (counter ticks).
static POLLED: [(AtomicU64, AtomicU64); MAX_PCPUS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_PCPUS];
/// Each pCPU's scheduling deadline (the timer's target without sampling).
static SCHED_DEADLINE: [AtomicU64; MAX_PCPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_PCPUS];
/// Each pCPU's samples since the last print. Leaf locks: a pCPU's sample takes only its own;
/// a print takes them in pCPU order and logs nothing while holding them.
static HISTOGRAMS: [Mutex<Histogram>; MAX_PCPUS] =
    [const { Mutex::new(Histogram::new()) }; MAX_PCPUS];
/// The boot's VMs by id (a restart keeps its VM's id and name), for the prints.
static NAMES: Once<Vec<(u16, String)>> = Once::new();
static PCPUS: AtomicU64 = AtomicU64::new(0);
/// When the profile was last printed at an accounting report (counter ticks, 0 = never).
static LAST_PRINT: AtomicU64 = AtomicU64::new(0);

/// Turns sampling on at `hz` per pCPU (before any vCPU runs); `names` are the boot's VMs.
pub fn start(hz: u32, pcpus: usize, names: Vec<(u16, String)>) {
    let period = (cpu::counter_frequency() / u64::from(hz)).max(1);
    NAMES.call_once(|| names);
    PCPUS.store(pcpus as u64, Relaxed);
    HZ.store(hz, Relaxed);
    let first = cpu::counter() + period;
    for next in &NEXT {
        next.store(first, Relaxed);
    }
    PERIOD.store(period, Relaxed);
    info!("profiling: sampling every pCPU {hz} times a second (profile lines at each accounting report and at power-off)");
}

fn on() -> bool {
    PERIOD.load(Relaxed) != 0
}

/// What the EL2 timer of `pcpu` should be set to for scheduling `deadline`: the same, or the
/// pCPU's next sample if that comes first. `None` (no scheduling deadline) stays `None` when off.
pub fn timer_deadline(pcpu: usize, deadline: Option<u64>) -> Option<u64> {
    if !on() {
        return deadline;
    }
    let Some(next) = NEXT.get(pcpu) else {
        return deadline;
    };
    if let Some(d) = SCHED_DEADLINE.get(pcpu) {
        d.store(deadline.unwrap_or(u64::MAX), Relaxed);
    }
    let next = next.load(Relaxed);
    Some(deadline.map_or(next, |d| d.min(next)))
}

/// The scheduling deadline `pcpu`'s timer was last armed for (without the sample).
pub fn slice_deadline(pcpu: usize) -> u64 {
    SCHED_DEADLINE
        .get(pcpu)
        .map_or(u64::MAX, |d| d.load(Relaxed))
}

/// Whether the EL2 timer that just fired on `pcpu` was for scheduling (its deadline passed),
/// rather than only for a sample. Always true when off.
pub fn deadline_passed(pcpu: usize) -> bool {
    !on()
        || SCHED_DEADLINE
            .get(pcpu)
            .is_none_or(|d| cpu::counter() >= d.load(Relaxed))
}

/// The time the sample of `pcpu` was due, if one is due now; moves the next one on a period
/// (or a period from now, if whole periods were missed: those are counted as missed).
fn due(pcpu: usize) -> Option<u64> {
    let period = PERIOD.load(Relaxed);
    let next = NEXT.get(pcpu)?;
    let now = cpu::counter();
    let due = next.load(Relaxed);
    if period == 0 || now < due {
        return None;
    }
    let late = (now - due) / period;
    let after = if late == 0 {
        due + period
    } else {
        now + period
    };
    next.store(after, Relaxed);
    if late > 0 {
        if let Some(h) = HISTOGRAMS.get(pcpu) {
            h.lock().missed(late);
        }
    }
    Some(due)
}

/// Where a sample due at `due` found `pcpu` that was not in a guest or asleep, its stay in
/// EL2 under way since `el2_since` ([`profile::place_in_el2`]).
fn in_el2(pcpu: usize, due: u64, el2_since: u64) -> Where {
    let poll = POLLED
        .get(pcpu)
        .map_or(0..=0, |(from, to)| from.load(Relaxed)..=to.load(Relaxed));
    profile::place_in_el2(due, el2_since, poll)
}

/// `pcpu` trapped from a guest to EL2 at `now` (counter ticks).
pub fn leaving_guest(pcpu: usize, now: u64) {
    if !on() {
        return;
    }
    if let Some((last, before)) = IN_EL2_SINCE.get(pcpu) {
        before.store(last.load(Relaxed), Relaxed);
        last.store(now, Relaxed);
    }
}

/// `pcpu` spun in a halt poll from `from` to `to` (counter ticks).
pub fn polled(pcpu: usize, from: u64, to: u64) {
    if !on() {
        return;
    }
    if let Some((f, t)) = POLLED.get(pcpu) {
        f.store(from, Relaxed);
        t.store(to, Relaxed);
    }
}

fn record(pcpu: usize, at: Where) {
    if let Some(h) = HISTOGRAMS.get(pcpu) {
        h.lock().record(at);
    }
}

/// The EL2 timer interrupted VM `vm`'s vCPU on `pcpu` at `pc` (ELR_EL2; `spsr` SPSR_EL2).
pub fn from_guest(pcpu: usize, vm: u16, pc: u64, spsr: u64) {
    if !on() {
        return;
    }
    let Some(due) = due(pcpu) else { return };
    let since = IN_GUEST_SINCE.get(pcpu).map_or(0, |s| s.load(Relaxed));
    let at = if due >= since {
        // SPSR_EL2.M[3:2] is the exception level the guest was at.
        let el0 = (spsr >> 2) & 0b11 == 0;
        Where::Guest { vm, pc, el0 }
    } else {
        // This interrupt's own trap is the last one; the stay in EL2 before it began at the
        // one before.
        let el2_since = IN_EL2_SINCE.get(pcpu).map_or(0, |(_, b)| b.load(Relaxed));
        in_el2(pcpu, due, el2_since)
    };
    record(pcpu, at);
}

/// The EL2 timer woke `pcpu` in the idle loop, which went to sleep at `slept_at`.
pub fn from_idle(pcpu: usize, slept_at: u64) {
    if !on() {
        return;
    }
    let Some(due) = due(pcpu) else { return };
    record(
        pcpu,
        if due >= slept_at {
            Where::Idle
        } else {
            // The idle loop is part of the stay in EL2 that began at the last trap.
            let el2_since = IN_EL2_SINCE.get(pcpu).map_or(0, |(l, _)| l.load(Relaxed));
            in_el2(pcpu, due, el2_since)
        },
    );
}

/// `pcpu` leaves EL2 for a guest now.
pub fn entering_guest(pcpu: usize) {
    if !on() {
        return;
    }
    if let Some(s) = IN_GUEST_SINCE.get(pcpu) {
        s.store(cpu::counter(), Relaxed);
    }
}

/// At power-off: prints what is left, once, and returns only when it is printed, so that no
/// pCPU powers the machine off in the middle of another's print (every pCPU that finds the
/// last VM gone calls this before powering off).
pub fn print_final() {
    static PRINTED: Mutex<bool> = Mutex::new(false);
    if !on() {
        return;
    }
    let mut printed = PRINTED.lock();
    if !*printed {
        print(shared_abi::profile::FINAL_TAG);
        *printed = true;
    }
}

/// At an accounting report tagged `tag`: prints the samples since the last print and starts
/// afresh, unless the last print was less than
/// [`PRINT_MIN_INTERVAL_MS`](shared_abi::profile::PRINT_MIN_INTERVAL_MS) ago (any VM may ask
/// for reports, each print is up to 64 lines per VM: the samples then wait for the next).
pub fn print_at_report(tag: u64) {
    if !on() {
        return;
    }
    let now = cpu::counter();
    let gap = cpu::counter_frequency() * shared_abi::profile::PRINT_MIN_INTERVAL_MS / 1000;
    let last = LAST_PRINT.load(Relaxed);
    if !profile::may_print(last, now, gap) {
        return;
    }
    if LAST_PRINT
        .compare_exchange(last, now, Relaxed, Relaxed)
        .is_ok()
    {
        // Formatted only here: with sampling off a report costs this module one load.
        print(&alloc::format!("{tag}"));
    }
}

/// Prints the samples since the last print, tagged `tag`, and starts afresh.
fn print(tag: &str) {
    if !on() {
        return;
    }
    let pcpus = (PCPUS.load(Relaxed) as usize).min(MAX_PCPUS);
    let lines = {
        let mut held: Vec<_> = HISTOGRAMS[..pcpus].iter().map(|h| h.lock()).collect();
        let lines = profile::report(
            tag,
            HZ.load(Relaxed),
            pcpus,
            held.iter().map(|h| &**h),
            NAMES.get().map_or(&[], |n| n.as_slice()),
        );
        for h in &mut held {
            h.clear();
        }
        lines
    };
    for line in lines {
        info!("{line}");
    }
}
