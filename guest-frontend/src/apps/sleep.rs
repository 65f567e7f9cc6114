//! `sleep`: `rounds` timed sleeps of `sleep_ms` each, measured on the virtual counter.

use vm_runtime::timer::{self, Instant};
use vm_runtime::{println, StartInfo};

pub fn run(info: &StartInfo<'static>) {
    let Some(ms) = super::number(info, "sleep_ms", 200) else {
        return;
    };
    let Some(rounds) = super::number(info, "rounds", 3) else {
        return;
    };
    let mut early = None;
    for _ in 0..rounds {
        let start = Instant::now();
        timer::sleep_ms(ms);
        let measured = start.elapsed_ms();
        println!("slept {ms} ms: measured {measured} ms");
        if measured < ms {
            early.get_or_insert(measured);
        }
    }
    match early {
        None => println!("REPORT ok: slept {rounds} x {ms} ms"),
        Some(measured) => println!("REPORT fail: woke after {measured} ms of a {ms} ms sleep"),
    }
}
