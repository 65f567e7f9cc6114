//! `memcpy`: single-copy memory bandwidth inside a guest, the ceiling of any data path that
//! copies each byte once (like the back-end's guest-to-guest copy) on this machine. Copies a
//! buffer of `memcpy_kib` KiB (default 1024: larger than the caches QEMU models, so memory
//! speed, not cache speed) `memcpy_rounds` times (default 32), timing each copy with the
//! virtual counter, and prints a `BENCH memcpy_mbps` line in Mbit/s (as iperf counts), and a
//! `BENCH shared_copy_mbps` line for the volatile copy the rings use, timed in the same rounds.
//!
//! Settings: `memcpy_kib`, `memcpy_rounds`, `memcpy_delay_ms` (wait this long first, so a
//! test sharing the boot is over).

use alloc::vec;
use alloc::vec::Vec;

use shared_abi::virtq::PoolMem;
use vm_runtime::shared::SharedMem;
use vm_runtime::timer;
use vm_runtime::{println, StartInfo};

pub fn run(info: &StartInfo<'static>) {
    let (Some(kib), Some(rounds), Some(delay_ms)) = (
        super::number(info, "memcpy_kib", 1024),
        super::number(info, "memcpy_rounds", 32),
        super::number(info, "memcpy_delay_ms", 0),
    ) else {
        return;
    };
    if delay_ms > 0 {
        // Measure on a quiet machine: after the throughput test that shares this boot.
        println!("memcpy: waiting {delay_ms} ms for the machine to be quiet");
        timer::sleep_ms(delay_ms);
    }
    let len = (kib.clamp(4, 4096) * 1024) as usize;
    let rounds = rounds.clamp(3, 10_000) as usize;
    let mut src = vec![0u8; len];
    for (i, byte) in src.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let mut dst = vec![0u8; len];
    // The same copy out of shared memory, as the front-end and back-end do it (volatile, so a
    // peer writing meanwhile is no undefined behaviour): the data path's real copy cost. Both
    // kinds alternate in each round so they see the same machine (QEMU's speed moves a lot).
    let shared = SharedMem::leak_pages(len / 4096);
    shared.write(0, &src);
    let mut mbps: Vec<u64> = Vec::with_capacity(rounds);
    let mut shared_mbps: Vec<u64> = Vec::with_capacity(rounds);
    // One untimed round, so every page has been touched before the clock runs. (Under QEMU the
    // memcpy figure still varies about tenfold between boots, 1.2 or 11-16 Gbit/s, and within
    // a boot it stays in one mode; the volatile copy moves much less. Cause not found.)
    dst.copy_from_slice(&src);
    shared.read(0, &mut dst);
    let rate = |ticks: u64| len as u64 * 8 / timer::ticks_to_us(ticks.max(1)).max(1);
    for round in 0..rounds {
        // Vary the source so no copy can be elided or served from the previous round.
        src[round % len] = round as u8;
        let start = timer::now();
        dst.copy_from_slice(&src);
        let copied = timer::now();
        // `black_box` keeps the copy from being optimised away.
        core::hint::black_box(&mut dst);
        mbps.push(rate(copied - start));
        let start = timer::now();
        shared.read(0, &mut dst);
        shared_mbps.push(rate(timer::now() - start));
        core::hint::black_box(&mut dst);
    }
    shared.write(0, &src);
    shared.read(0, &mut dst);
    if dst != src {
        println!("REPORT fail: copy out of shared memory does not match its source");
        return;
    }
    // The shared copy first: a harness may stop reading at the memcpy figure.
    for (name, values, what) in [
        (
            "shared_copy_mbps",
            &mut shared_mbps,
            "volatile copy out of shared pages",
        ),
        ("memcpy_mbps", &mut mbps, "memcpy"),
    ] {
        values.sort_unstable();
        println!(
            "BENCH {name} min={} median={} max={} n={} freq_hz=0 unit=mbit_per_s ({what}, {} \
             KiB per copy)",
            values[0],
            values[rounds / 2],
            values[rounds - 1],
            rounds,
            kib
        );
    }
    println!(
        "REPORT ok: memcpy {} KiB x {rounds}: median {} Mbit/s, out of shared memory {} Mbit/s",
        len / 1024,
        mbps[rounds / 2],
        shared_mbps[rounds / 2]
    );
}
