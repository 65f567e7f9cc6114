//! `memcpy`: single-copy memory bandwidth inside a guest, the ceiling of any data path that
//! copies each byte once (like the back-end's guest-to-guest copy) on this machine. Copies a
//! buffer of `memcpy_kib` KiB (default 1024: larger than the caches QEMU models, so memory
//! speed, not cache speed) `memcpy_rounds` times (default 32), timing each copy with the
//! virtual counter, and prints a `BENCH memcpy_mbps` line in Mbit/s (as iperf counts).
//!
//! Settings: `memcpy_kib`, `memcpy_rounds`.

use alloc::vec;
use alloc::vec::Vec;

use vm_runtime::timer;
use vm_runtime::{println, StartInfo};

pub fn run(info: &StartInfo<'static>) {
    let (Some(kib), Some(rounds)) = (
        super::number(info, "memcpy_kib", 1024),
        super::number(info, "memcpy_rounds", 32),
    ) else {
        return;
    };
    let len = (kib.clamp(4, 4096) * 1024) as usize;
    let rounds = rounds.clamp(3, 10_000) as usize;
    let mut src = vec![0u8; len];
    for (i, byte) in src.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let mut dst = vec![0u8; len];
    let mut mbps: Vec<u64> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Vary the source so no copy can be elided or served from the previous round.
        src[round % len] = round as u8;
        let start = timer::now();
        dst.copy_from_slice(&src);
        let ticks = (timer::now() - start).max(1);
        // `black_box` keeps the copy from being optimised away.
        core::hint::black_box(&mut dst);
        let bits = len as u64 * 8;
        let us = timer::ticks_to_us(ticks).max(1);
        mbps.push(bits / us);
    }
    if dst != src {
        println!("REPORT fail: memcpy copy does not match its source");
        return;
    }
    mbps.sort_unstable();
    println!(
        "BENCH memcpy_mbps min={} median={} max={} n={} freq_hz=0 unit=mbit_per_s \
         ({} KiB per copy)",
        mbps[0],
        mbps[rounds / 2],
        mbps[rounds - 1],
        rounds,
        kib
    );
    println!(
        "REPORT ok: memcpy {} KiB x {rounds}: median {} Mbit/s",
        len / 1024,
        mbps[rounds / 2]
    );
}
