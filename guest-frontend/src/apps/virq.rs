//! `virq`: asks the hypervisor (TEST_INJECT) to queue the SGIs in `mask`, `repeat` times over, and
//! checks that every one is delivered exactly once, even when more are pending than the virtual
//! interface has list registers.
//!
//! With `late_handlers = true` the SGIs come first and their handlers are registered only once
//! they have all been taken (and ended) without one: each handler must then be called exactly
//! once, at its registration, for all of its SGI's arrivals (`vm_runtime::irq` keeps a missed
//! interrupt for its handler, as a pending interrupt would be kept; it used to drop it).

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use shared_abi::layout::intid::SGI_COUNT;
use vm_runtime::hypercall::{self, Status};
use vm_runtime::timer::{self, Instant};
use vm_runtime::{irq, println, StartInfo};

/// Longest wait for the expected deliveries.
const TIMEOUT_MS: u64 = 2_000;
/// After the last expected delivery, how long to watch for extra ones.
const SETTLE_MS: u64 = 20;
/// With `late_handlers`: how long the SGIs have to arrive before their handlers exist.
const LATE_HANDLERS_AFTER_MS: u64 = 200;

static COUNTS: [AtomicU32; SGI_COUNT as usize] = [const { AtomicU32::new(0) }; SGI_COUNT as usize];

fn on_sgi(intid: u32) {
    if let Some(count) = COUNTS.get(intid as usize) {
        count.fetch_add(1, Ordering::Relaxed);
    }
}

fn total() -> u64 {
    COUNTS
        .iter()
        .map(|c| u64::from(c.load(Ordering::Relaxed)))
        .sum()
}

pub fn run(info: &StartInfo<'static>) {
    let Some(mask) = super::number(info, "mask", 0xff) else {
        return;
    };
    let Some(repeat) = super::number(info, "repeat", 3) else {
        return;
    };
    if mask == 0 || mask >> SGI_COUNT != 0 {
        println!("REPORT fail: mask {mask:#x} must select SGIs in 0..{SGI_COUNT}");
        return;
    }
    let late_handlers = match vm_runtime::setting_bool_or(info.settings, "late_handlers", false) {
        Ok(late) => late,
        Err(e) => {
            println!("REPORT fail: {e}");
            return;
        }
    };
    let sgis = || (0..SGI_COUNT).filter(|i| mask & (1 << i) != 0);
    let register = || {
        for intid in sgis() {
            irq::register(intid, on_sgi).expect("SGI INTIDs are in range");
        }
    };
    if !late_handlers {
        register();
    }
    // Late handlers are called once per SGI for everything that came before them.
    let per_sgi = if late_handlers { 1 } else { repeat };
    let expected = u64::from(mask.count_ones()).saturating_mul(per_sgi);
    let status = hypercall::test_inject(mask, repeat);
    if status != Status::Ok {
        println!("REPORT fail: TEST_INJECT returned {status:?}");
        return;
    }
    if late_handlers {
        // Every SGI is taken and ended here, with no handler yet (four list registers at a
        // time, refilled as they are ended: well within this).
        timer::sleep_ms(LATE_HANDLERS_AFTER_MS);
        register();
    }
    let start = Instant::now();
    while total() < expected && start.elapsed_ms() < TIMEOUT_MS {
        timer::sleep_ms(1);
    }
    timer::sleep_ms(SETTLE_MS);
    let got = total();
    println!("VIRQ delivered {got}/{expected}");
    let mut per_intid = String::from("per INTID:");
    let mut exact = got == expected;
    for (intid, count) in COUNTS.iter().enumerate() {
        let count = u64::from(count.load(Ordering::Relaxed));
        let wanted = if mask & (1 << intid) != 0 { per_sgi } else { 0 };
        if count != 0 || wanted != 0 {
            let _ = write!(per_intid, " {intid}={count}");
        }
        exact &= count == wanted;
    }
    println!("{per_intid}");
    if exact {
        println!("REPORT ok: {got} virtual interrupts delivered exactly");
    } else {
        println!(
            "REPORT fail: delivered {got} of {expected} ({per_sgi} handler call(s) per SGI \
             expected)"
        );
    }
}
