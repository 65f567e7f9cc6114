//! Per-VM accounting: how much pCPU time each VM got and how often it made the hypervisor
//! work (exits, hypercalls, MMIO traps, forwarded I/O requests, injected interrupts), counted
//! from boot in lock-free atomics so that every trap path can count without a lock, and the
//! report line ACCOUNTING_REPORT prints (`shared_abi::hypercall::ACCOUNTING_REPORT` has the
//! format, which the bench parses); and the hypervisor's own busy time by kind of exit
//! ([`El2Time`]), printed after each report and when the machine powers off.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use shared_abi::layout::MAX_VMS;

/// What is counted per VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Counter ticks spent running this VM's vCPUs.
    RunTicks,
    /// Traps from the VM to EL2 (synchronous exceptions, interrupts, SErrors).
    Exits,
    Hypercalls,
    /// Stage-2 faults handled as device accesses (emulated ECAM, forwarded requests).
    MmioExits,
    /// Accesses forwarded to a device model as I/O requests.
    Ioreqs,
    /// Virtual interrupts queued for the VM.
    Virqs,
    /// Interrupts of the VM's passed-through device that went through EL2: each INTx taken and
    /// injected, each vPE doorbell (a vLPI for a vCPU that was not resident). A vLPI delivered
    /// straight to a running vCPU costs no exit and is not counted.
    DeviceIrqs,
    /// Loads of one of the VM's vCPUs onto a pCPU whose stage-2 context (VTTBR_EL2) held
    /// another VM: a world switch that changed the VMID. Under QEMU each one flushes the
    /// pCPU's whole soft TLB, so every page the VM touches next is walked again.
    VmidSwitches,
    /// Times one of its running vCPUs was preempted because a woken vCPU of any VM asked it to
    /// give way (`sched`'s wake-up preemption).
    GaveWay,
}

const COUNTERS: usize = 9;

impl Counter {
    const fn index(self) -> usize {
        self as usize
    }
}

/// One VM's counters, as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub run_ticks: u64,
    pub exits: u64,
    pub hypercalls: u64,
    pub mmio_exits: u64,
    pub ioreqs: u64,
    pub virqs: u64,
    pub device_irqs: u64,
    pub vmid_switches: u64,
    pub gave_way: u64,
}

/// The counters of every VM id (`1..=MAX_VMS`; id 0, the hypervisor, counts nothing) and the
/// pCPUs' idle time.
pub struct Accounting {
    vms: [[AtomicU64; COUNTERS]; MAX_VMS + 1],
    idle_ticks: AtomicU64,
}

impl Default for Accounting {
    fn default() -> Self {
        Self::new()
    }
}

impl Accounting {
    pub const fn new() -> Self {
        Accounting {
            vms: [const { [const { AtomicU64::new(0) }; COUNTERS] }; MAX_VMS + 1],
            idle_ticks: AtomicU64::new(0),
        }
    }

    /// Adds `n` to `vm`'s `counter`; ids outside `1..=MAX_VMS` count nothing.
    pub fn add(&self, vm: u16, counter: Counter, n: u64) {
        if let Some(counters) = self.vms.get(usize::from(vm)).filter(|_| vm != 0) {
            counters[counter.index()].fetch_add(n, Relaxed);
        }
    }

    pub fn add_idle(&self, ticks: u64) {
        self.idle_ticks.fetch_add(ticks, Relaxed);
    }

    pub fn idle_ticks(&self) -> u64 {
        self.idle_ticks.load(Relaxed)
    }

    /// `vm`'s counters now (all zero for an id outside `1..=MAX_VMS`).
    pub fn snapshot(&self, vm: u16) -> Snapshot {
        let Some(c) = self.vms.get(usize::from(vm)).filter(|_| vm != 0) else {
            return Snapshot::default();
        };
        let read = |counter: Counter| c[counter.index()].load(Relaxed);
        Snapshot {
            run_ticks: read(Counter::RunTicks),
            exits: read(Counter::Exits),
            hypercalls: read(Counter::Hypercalls),
            mmio_exits: read(Counter::MmioExits),
            ioreqs: read(Counter::Ioreqs),
            virqs: read(Counter::Virqs),
            device_irqs: read(Counter::DeviceIrqs),
            vmid_switches: read(Counter::VmidSwitches),
            gave_way: read(Counter::GaveWay),
        }
    }
}

/// Why a vCPU left for EL2, for [`El2Time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// HVC or SMC: a hypercall (or PSCI).
    Hypercall,
    /// WFI: the vCPU waits for an interrupt (its halt poll and any switch to another vCPU).
    Wait,
    /// A stage-2 fault: an emulated device access, a forwarded one, or a bad one.
    Mmio,
    /// Any other trap (WFE, a system register, an SError).
    Other,
    /// A physical interrupt: the slice or sample timer, a kick, a device's, the guest's timer.
    Interrupt,
}

const EXIT_KINDS: usize = 5;
const EXIT_KIND_NAMES: [&str; EXIT_KINDS] = ["hypercall", "wait", "mmio", "other", "interrupt"];

impl ExitKind {
    const ALL: [ExitKind; EXIT_KINDS] = [
        ExitKind::Hypercall,
        ExitKind::Wait,
        ExitKind::Mmio,
        ExitKind::Other,
        ExitKind::Interrupt,
    ];

    /// As a byte, for a per-pCPU atomic.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }

    /// Back from [`ExitKind::to_u8`]; anything else is `Other`.
    pub fn from_u8(b: u8) -> ExitKind {
        Self::ALL
            .get(usize::from(b))
            .copied()
            .unwrap_or(ExitKind::Other)
    }
}

/// The hypervisor's busy time per kind of exit: from the trap to the return to a guest, less
/// the idle time in between (a halt poll, the idle loop): what the hypervisor's own code
/// costs, which a sampling profile cannot look inside (EL2 runs with interrupts masked).
pub struct El2Time {
    ticks: [AtomicU64; EXIT_KINDS],
    exits: [AtomicU64; EXIT_KINDS],
}

impl Default for El2Time {
    fn default() -> Self {
        Self::new()
    }
}

impl El2Time {
    pub const fn new() -> Self {
        El2Time {
            ticks: [const { AtomicU64::new(0) }; EXIT_KINDS],
            exits: [const { AtomicU64::new(0) }; EXIT_KINDS],
        }
    }

    /// One exit of `kind` that kept EL2 busy for `ticks`.
    pub fn add(&self, kind: ExitKind, ticks: u64) {
        let i = kind as usize;
        self.ticks[i].fetch_add(ticks, Relaxed);
        self.exits[i].fetch_add(1, Relaxed);
    }

    /// The line printed after each accounting report and at power-off: per kind, the exits,
    /// their mean and their sum, since boot.
    pub fn line(&self, frequency: u64) -> String {
        let mut line = String::from("EL2 busy time by exit kind:");
        let mut total = 0;
        for (i, name) in EXIT_KIND_NAMES.iter().enumerate() {
            let (ticks, exits) = (self.ticks[i].load(Relaxed), self.exits[i].load(Relaxed));
            total += ticks;
            let us = ticks_to_us(ticks, frequency);
            let mean_tenths = (ticks_to_us(ticks.saturating_mul(10), frequency))
                .checked_div(exits)
                .unwrap_or(0);
            line += &format!(
                " {name} {exits} x {}.{} us = {} ms,",
                mean_tenths / 10,
                mean_tenths % 10,
                us / 1000
            );
        }
        line.pop();
        line + &format!("; in all {} ms", ticks_to_us(total, frequency) / 1000)
    }
}

/// Counter ticks to microseconds at `frequency` Hz (0 if the frequency is unknown).
pub fn ticks_to_us(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(frequency)) as u64
}

/// The report line of one VM.
pub fn vm_line(tag: u64, name: &str, s: &Snapshot, frequency: u64) -> String {
    format!(
        "accounting {tag} vm={name} run_us={} exits={} hypercalls={} mmio_exits={} ioreqs={} \
         virqs={} device_irqs={} vmid_switches={} gave_way={}",
        ticks_to_us(s.run_ticks, frequency),
        s.exits,
        s.hypercalls,
        s.mmio_exits,
        s.ioreqs,
        s.virqs,
        s.device_irqs,
        s.vmid_switches,
        s.gave_way
    )
}

/// The report's last line: the pCPUs' idle time.
pub fn idle_line(tag: u64, idle_ticks: u64, frequency: u64, pcpus: usize) -> String {
    format!(
        "accounting {tag} idle_us={} pcpus={pcpus}",
        ticks_to_us(idle_ticks, frequency)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn el2_time_is_summed_per_kind_of_exit() {
        let t = El2Time::new();
        // 62.5 MHz (QEMU virt's counter): 625 ticks are 10 us.
        t.add(ExitKind::Hypercall, 625);
        t.add(ExitKind::Hypercall, 1250);
        t.add(ExitKind::Interrupt, 62_500_000);
        assert_eq!(
            t.line(62_500_000),
            "EL2 busy time by exit kind: hypercall 2 x 15.0 us = 0 ms, wait 0 x 0.0 us = 0 ms, \
             mmio 0 x 0.0 us = 0 ms, other 0 x 0.0 us = 0 ms, interrupt 1 x 1000000.0 us = \
             1000 ms; in all 1000 ms"
        );
        for kind in ExitKind::ALL {
            assert_eq!(ExitKind::from_u8(kind.to_u8()), kind);
        }
        assert_eq!(ExitKind::from_u8(200), ExitKind::Other);
    }

    #[test]
    fn counters_are_per_vm_and_bad_ids_count_nothing() {
        let a = Accounting::new();
        a.add(1, Counter::Exits, 3);
        a.add(1, Counter::Exits, 2);
        a.add(2, Counter::Ioreqs, 7);
        a.add(MAX_VMS as u16, Counter::Virqs, 1);
        a.add(0, Counter::Exits, 100);
        a.add(MAX_VMS as u16 + 1, Counter::Exits, 100);
        a.add(u16::MAX, Counter::Exits, 100);
        assert_eq!(a.snapshot(1).exits, 5);
        assert_eq!(
            a.snapshot(2),
            Snapshot {
                ioreqs: 7,
                ..Snapshot::default()
            }
        );
        assert_eq!(a.snapshot(MAX_VMS as u16).virqs, 1);
        assert_eq!(a.snapshot(0), Snapshot::default());
        assert_eq!(a.snapshot(u16::MAX), Snapshot::default());
        a.add_idle(10);
        a.add_idle(5);
        assert_eq!(a.idle_ticks(), 15);
    }

    #[test]
    fn report_lines_have_the_documented_shape() {
        let s = Snapshot {
            run_ticks: 62_500_000,
            exits: 1,
            hypercalls: 2,
            mmio_exits: 3,
            ioreqs: 4,
            virqs: 5,
            device_irqs: 6,
            vmid_switches: 7,
            gave_way: 8,
        };
        assert_eq!(
            vm_line(9, "guest1", &s, 62_500_000),
            "accounting 9 vm=guest1 run_us=1000000 exits=1 hypercalls=2 mmio_exits=3 ioreqs=4 \
             virqs=5 device_irqs=6 vmid_switches=7 gave_way=8"
        );
        assert_eq!(
            idle_line(9, 125_000_000, 62_500_000, 2),
            "accounting 9 idle_us=2000000 pcpus=2"
        );
        // No frequency, no division by zero; huge tick counts do not overflow.
        assert_eq!(ticks_to_us(5, 0), 0);
        assert_eq!(ticks_to_us(u64::MAX, 1_000_000), u64::MAX);
    }
}
