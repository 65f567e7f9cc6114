//! Time: the virtual counter, and sleeping on the EL1 virtual timer (PPI 27). A sleeping vCPU
//! waits in WFI, so the hypervisor runs other vCPUs meanwhile; it never busy-spins.

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use shared_abi::layout::{intid, MAX_VCPUS_PER_VM};

use crate::{cpu, gic, irq};

const CTL_ENABLE: u64 = 1 << 0;

/// Set by the timer IRQ on the vCPU whose timer fired; cleared when a sleep arms the timer.
static FIRED: [AtomicBool; MAX_VCPUS_PER_VM as usize] =
    [const { AtomicBool::new(false) }; MAX_VCPUS_PER_VM as usize];

/// Registers the timer IRQ handler (once per VM, by the runtime).
pub(crate) fn init() {
    irq::register(intid::VIRTUAL_TIMER, on_irq).expect("timer INTID is in range");
}

/// Switches this vCPU's timer off (by the runtime on every vCPU at start).
pub(crate) fn init_cpu() {
    cpu::set_vtimer_ctl(0);
}

fn on_irq(_intid: u32) {
    // Disarm first so the (level) timer interrupt is no longer asserted when we EOI.
    cpu::set_vtimer_ctl(0);
    if let Some(flag) = FIRED.get(cpu::index()) {
        flag.store(true, Ordering::Release);
    }
}

/// Counter ticks (CNTVCT_EL0).
pub fn now() -> u64 {
    cpu::cntvct()
}

/// Counter frequency in Hz (CNTFRQ_EL0; never 0).
pub fn frequency() -> u64 {
    cpu::cntfrq().max(1)
}

pub fn ticks_to_us(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(frequency())) as u64
}

pub fn ticks_to_ms(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000 / u128::from(frequency())) as u64
}

/// Rounds up, so a sleep of `us` lasts at least that long.
pub fn us_to_ticks(us: u64) -> u64 {
    let ticks = (u128::from(us) * u128::from(frequency())).div_ceil(1_000_000);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

pub fn ms_to_ticks(ms: u64) -> u64 {
    us_to_ticks(ms.saturating_mul(1_000))
}

pub fn sleep_ms(ms: u64) {
    sleep_ticks(ms_to_ticks(ms));
}

pub fn sleep_us(us: u64) {
    sleep_ticks(us_to_ticks(us));
}

pub fn sleep(duration: Duration) {
    sleep_us(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
}

pub fn sleep_ticks(ticks: u64) {
    sleep_until(now().saturating_add(ticks));
}

/// Sleeps until the counter reaches `deadline`: arms the virtual timer and waits in WFI until
/// its interrupt has been handled. Must not be called from an IRQ handler (the timer interrupt
/// could not be taken there).
pub fn sleep_until(deadline: u64) {
    wait_until(deadline, || false);
}

/// Waits in WFI until `done()` is true or the counter reaches `deadline`, whichever comes first;
/// returns the last value of `done()`. `done` is checked with IRQs masked after every wake-up, so
/// a condition set by an IRQ handler is never missed. Must not be called from an IRQ handler.
pub fn wait_until(deadline: u64, done: impl Fn() -> bool) -> bool {
    let Some(fired) = FIRED.get(cpu::index()) else {
        return done();
    };
    let was_enabled = gic::irqs_enabled();
    // Check-then-WFI with IRQs masked: an interrupt arriving in between still ends the WFI
    // (architecturally, and the hypervisor checks pending virtual IRQs before blocking), so no
    // wake-up is lost. The interrupt is then taken in the short unmasked window.
    gic::disable_irqs();
    fired.store(false, Ordering::Relaxed);
    cpu::set_vtimer(deadline, CTL_ENABLE);
    let mut finished = done();
    while !finished && !fired.load(Ordering::Acquire) {
        cpu::wfi();
        gic::enable_irqs();
        cpu::isb();
        gic::disable_irqs();
        finished = done();
    }
    if !fired.load(Ordering::Relaxed) {
        // Woken by the condition: the timer is no longer wanted.
        cpu::set_vtimer_ctl(0);
    }
    if was_enabled {
        gic::enable_irqs();
    }
    finished
}

/// A point in time on the virtual counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    pub fn now() -> Instant {
        Instant(now())
    }

    pub fn from_ticks(ticks: u64) -> Instant {
        Instant(ticks)
    }

    pub fn ticks(self) -> u64 {
        self.0
    }

    /// Ticks from `earlier` to `self` (0 if `earlier` is later).
    pub fn ticks_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(ticks_to_us(self.ticks_since(earlier)))
    }

    pub fn elapsed_ticks(self) -> u64 {
        Instant::now().ticks_since(self)
    }

    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    pub fn elapsed_us(self) -> u64 {
        ticks_to_us(self.elapsed_ticks())
    }

    pub fn elapsed_ms(self) -> u64 {
        ticks_to_ms(self.elapsed_ticks())
    }
}
