//! `memcpy`: single-copy memory bandwidth inside a guest, the ceiling of any data path that
//! copies each byte once (like the back-end's guest-to-guest copy) on this machine, measured
//! at several buffer placements and sizes in one boot so that QEMU's placement effects show
//! as figures of their own instead of moving the ceiling between boots.
//!
//! Why placements: QEMU's soft TLB is direct-mapped (entry = page number modulo its size, a
//! power of two that QEMU resizes at each flush from recent use). Two buffers a power of two
//! apart, which is what a buddy allocator hands out, put source page i and destination page
//! i in the same entry whenever the TLB is no larger than their distance in pages: every
//! access then misses and walks both translation stages. Whether it is depends on the TLB
//! size at that moment, so one plain memcpy figure is bimodal across boots (issue 11 saw
//! 530-22 250 Mbit/s). Unaligned accesses take QEMU's slow helper path on `-cpu max`.
//!
//! Every round copies, in turn (so all see the same machine):
//! - `memcpy_mbps`: 1 MiB (`memcpy_kib`), source and destination staggered by a whole number
//!   of pages plus a few cache lines past a power of two, four such placements: the ceiling;
//! - `memcpy_aliased_mbps`: the same size exactly [`ALIAS`] apart (the collision case);
//! - `memcpy_unaligned_mbps`: staggered, but the destination one byte off;
//! - `memcpy_64k_mbps`, `memcpy_4m_mbps`: other sizes, staggered;
//! - `shared_copy_mbps`: the copy out of shared pages a front-end makes of a received frame
//!   (`SharedMem::read`), co-aligned as the front-end places it: the bulk path;
//! - `shared_copy_unaligned_mbps`: the same, destination 1 byte off: not co-aligned, so
//!   aligned words shifted together (the memcpy way);
//! - `shared_to_shared_mbps`: shared pages to shared pages (`SharedMem::copy_to`), the
//!   back-end's guest-to-guest copy, co-aligned as pool buffers are, between two runs the
//!   allocator placed (a power of two apart, as it hands them out);
//! - `shared_to_shared_staggered_mbps`: the same into the second run [`SHARED_STAGGER`] bytes
//!   in, so source and destination pages no longer share QEMU's TLB entries.
//!
//! Each figure is a `BENCH ... unit=mbit_per_s` line (min, median, max over its copies).
//!
//! Before measuring, a self-check runs the shared-memory copies (`read`, `write`, `copy_to`)
//! on this machine, where the bulk path is the real `ldp`/`stp` assembly (host tests run a
//! stand-in): every shared alignment against every private one (16 x 16), at lengths around
//! one and two 64-byte blocks, each copy exactly its range with the bytes around it untouched.
//! A mismatch is `REPORT fail`.
//! Settings: `memcpy_kib`, `memcpy_rounds` (default 16), `memcpy_delay_ms` (wait this long
//! first, so a test sharing the boot is over). Needs a guest of at least 32 MiB.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use shared_abi::virtq::PoolMem;
use vm_runtime::shared::SharedMem;
use vm_runtime::timer;
use vm_runtime::{println, StartInfo};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The power-of-two distance between the two buffers of the aliased case, and the base of
/// the staggered ones. Bigger than any TLB this copy lets QEMU grow to (1024 pages).
const ALIAS: usize = 4 * MIB;
/// The largest copy.
const MAX_LEN: usize = 4 * MIB;
/// Staggered placements: destination distance past [`ALIAS`] (pages and cache lines).
const STAGGER: [usize; 4] = [4096 + 64, 3 * 4096 + 192, 7 * 4096 + 320, 17 * 4096 + 448];
/// Where the staggered shared-to-shared copy lands in its run (co-aligned with the source).
const SHARED_STAGGER: usize = 3 * 4096 + 192;

/// One kind of copy.
struct Case {
    name: &'static str,
    what: &'static str,
    len: usize,
    /// Destination offset past the source, per placement (used in turn each round).
    distances: Vec<usize>,
    /// Mbit/s of each copy.
    rates: Vec<u64>,
}

pub fn run(info: &StartInfo<'static>) {
    let (Some(kib), Some(rounds), Some(delay_ms)) = (
        super::number(info, "memcpy_kib", 1024),
        super::number(info, "memcpy_rounds", 16),
        super::number(info, "memcpy_delay_ms", 0),
    ) else {
        return;
    };
    if delay_ms > 0 {
        // Measure on a quiet machine: after the throughput test that shares this boot.
        println!("memcpy: waiting {delay_ms} ms for the machine to be quiet");
        timer::sleep_ms(delay_ms);
    }
    if let Err(why) = self_check() {
        println!("REPORT fail: shared-memory copy self-check: {why}");
        return;
    }
    println!(
        "memcpy: self-check ok: shared-memory read, write and copy_to exact at {} alignments x {} lengths",
        16 * 16,
        CHECK_LENGTHS.len()
    );
    let len = (kib.clamp(4, 4096) as usize) * KIB;
    let rounds = rounds.clamp(3, 10_000) as usize;
    let staggered = |n: usize| STAGGER.iter().map(|s| ALIAS + s).cycle().take(n).collect();
    let mut cases = [
        Case {
            name: "memcpy_mbps",
            what: "memcpy, 4 staggered placements",
            len,
            distances: staggered(STAGGER.len()),
            rates: Vec::new(),
        },
        Case {
            name: "memcpy_aliased_mbps",
            what: "memcpy, buffers 4 MiB apart",
            len,
            distances: vec![ALIAS],
            rates: Vec::new(),
        },
        Case {
            name: "memcpy_unaligned_mbps",
            what: "memcpy, destination 1 byte off",
            len,
            distances: vec![ALIAS + STAGGER[0] + 1],
            rates: Vec::new(),
        },
        Case {
            name: "memcpy_64k_mbps",
            what: "memcpy, staggered",
            len: 64 * KIB,
            distances: staggered(STAGGER.len()),
            rates: Vec::new(),
        },
        Case {
            name: "memcpy_4m_mbps",
            what: "memcpy, staggered",
            len: MAX_LEN,
            distances: staggered(STAGGER.len()),
            rates: Vec::new(),
        },
    ];
    // One arena holds every placement: the source at an `ALIAS`-aligned offset inside it (the
    // heap is a buddy allocator, so such a block is aligned anyway; the offset makes sure).
    let span = ALIAS + STAGGER[STAGGER.len() - 1] + 1 + MAX_LEN;
    let mut arena = vec![0u8; span + ALIAS];
    let base = (ALIAS - arena.as_ptr() as usize % ALIAS) % ALIAS;
    for (i, byte) in arena[base..base + MAX_LEN].iter_mut().enumerate() {
        *byte = i as u8;
    }
    // The volatile copy out of shared memory, as the front-end and back-end do it: the data
    // path's real copy cost, into the first staggered destination.
    let shared = SharedMem::leak_pages(len / 4096);
    shared.write(0, &arena[base..base + len]);
    let other = SharedMem::leak_pages((len + SHARED_STAGGER) / 4096 + 1);
    let mut shared_rates = Vec::with_capacity(rounds);
    let mut shared_unaligned_rates = Vec::with_capacity(rounds);
    let mut shared_to_shared_rates = Vec::with_capacity(rounds);
    let mut staggered_rates = Vec::with_capacity(rounds);
    let rate = |len: usize, ticks: u64| len as u64 * 8 / timer::ticks_to_us(ticks.max(1)).max(1);
    // One untimed pass, so every page has been touched before the clock runs.
    for case in &cases {
        for &d in &case.distances {
            let (src, dst) = arena[base..].split_at_mut(d);
            dst[..case.len].copy_from_slice(&src[..case.len]);
        }
    }
    for round in 0..rounds {
        for case in cases.iter_mut() {
            let d = case.distances[round % case.distances.len()];
            let (src, dst) = arena[base..].split_at_mut(d);
            // Vary the source so no copy can be elided or served from the previous round.
            src[round % case.len] = round as u8;
            let start = timer::now();
            dst[..case.len].copy_from_slice(&src[..case.len]);
            let ticks = timer::now() - start;
            // `black_box` keeps the copy from being optimised away.
            core::hint::black_box(&mut dst[..case.len]);
            case.rates.push(rate(case.len, ticks));
        }
        let dst = &mut arena[base + ALIAS + STAGGER[0]..][..len];
        let start = timer::now();
        shared.read(0, dst);
        shared_rates.push(rate(len, timer::now() - start));
        core::hint::black_box(dst);
        let dst = &mut arena[base + ALIAS + STAGGER[0] + 1..][..len];
        let start = timer::now();
        shared.read(0, dst);
        shared_unaligned_rates.push(rate(len, timer::now() - start));
        core::hint::black_box(dst);
        let start = timer::now();
        shared.copy_to(0, &other, 0, len);
        shared_to_shared_rates.push(rate(len, timer::now() - start));
        let start = timer::now();
        shared.copy_to(0, &other, SHARED_STAGGER, len);
        staggered_rates.push(rate(len, timer::now() - start));
    }
    let (src, dst) = arena[base..].split_at_mut(ALIAS + STAGGER[0]);
    shared.write(0, &src[..len]);
    shared.read(0, &mut dst[..len]);
    if dst[..len] != src[..len] {
        println!("REPORT fail: copy out of shared memory does not match its source");
        return;
    }
    // The others first, memcpy_mbps last: a harness may stop reading at the memcpy figure.
    print_figure(
        "shared_copy_mbps",
        "copy out of shared pages, co-aligned",
        len,
        &mut shared_rates,
    );
    print_figure(
        "shared_copy_unaligned_mbps",
        "copy out of shared pages, destination 1 byte off",
        len,
        &mut shared_unaligned_rates,
    );
    print_figure(
        "shared_to_shared_mbps",
        "copy between shared pages, co-aligned",
        len,
        &mut shared_to_shared_rates,
    );
    print_figure(
        "shared_to_shared_staggered_mbps",
        "copy between shared pages, co-aligned, destination staggered",
        len,
        &mut staggered_rates,
    );
    cases.rotate_left(1);
    for case in cases.iter_mut() {
        print_figure(case.name, case.what, case.len, &mut case.rates);
    }
    println!(
        "REPORT ok: memcpy {} KiB x {rounds} rounds at {} placements",
        len / KIB,
        STAGGER.len()
    );
}

fn print_figure(name: &str, what: &str, len: usize, rates: &mut [u64]) {
    rates.sort_unstable();
    let n = rates.len();
    println!(
        "BENCH {name} min={} median={} max={} n={n} freq_hz=0 unit=mbit_per_s ({what}, {} KiB \
         per copy)",
        rates[0],
        rates[n / 2],
        rates[n - 1],
        len / KIB
    );
}

/// Lengths of the self-check: below, at and past one and two 64-byte blocks, and runs of
/// several blocks up to what the span holds, so every head and tail around the bulk path
/// shows.
const CHECK_LENGTHS: [usize; 32] = [
    0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 79, 80, 81, 127, 128, 129, 143, 191, 192,
    193, 255, 256, 257, 300, 383, 384, 400, 496,
];
/// Bytes of each run the self-check looks at (every range it copies lies inside).
const CHECK_SPAN: usize = 512;

/// Runs `read`, `write` and `copy_to` of shared memory at every shared alignment against
/// every private (or second shared) one and each of [`CHECK_LENGTHS`]: each must copy exactly
/// its range and leave the bytes around it as they were.
fn self_check() -> Result<(), String> {
    let a = SharedMem::leak_pages(1);
    let b = SharedMem::leak_pages(1);
    let fill = |mem: &SharedMem, byte: u8| mem.write(0, &[byte; CHECK_SPAN]);
    let mut seen = vec![0u8; CHECK_SPAN];
    // Private buffers from a 16-byte-aligned place in each vector, so offsets from it are
    // alignments.
    let mut staging = vec![0u8; CHECK_SPAN + 16];
    let mut out = vec![0u8; CHECK_SPAN + 16];
    for offset in 0..16 {
        for other in 0..16 {
            for len in CHECK_LENGTHS {
                let what = |op: &str| format!("{op} at shared {offset} / {other}, {len} bytes");
                let data: Vec<u8> = (0..len)
                    .map(|i| {
                        (i as u8)
                            .wrapping_mul(31)
                            .wrapping_add((offset * 16 + other) as u8)
                    })
                    .collect();
                // write: private (at `other`) into shared (at `offset`).
                let staged = aligned(&mut staging);
                staged[other..other + len].copy_from_slice(&data);
                fill(&a, 0x5a);
                a.write(offset, &staged[other..other + len]);
                a.read(0, &mut seen);
                if !exact(&seen, offset, &data, 0x5a) {
                    return Err(what("write"));
                }
                // read: shared (at `offset`) into private (at `other`), guards around.
                let back = aligned(&mut out);
                back.fill(0xee);
                a.read(offset, &mut back[other..other + len]);
                if !exact(back, other, &data, 0xee) {
                    return Err(what("read"));
                }
                // memcpy (vm-runtime's, every alignment pair): private (at `other`) into
                // private (at `offset`), guards around.
                let staged = aligned(&mut staging);
                let back = aligned(&mut out);
                back.fill(0xee);
                back[offset..offset + len].copy_from_slice(&staged[other..other + len]);
                if !exact(back, offset, &data, 0xee) {
                    return Err(what("memcpy"));
                }
                // copy_to: shared (at `offset`) into shared (at `other`).
                fill(&b, 0xa5);
                a.copy_to(offset, &b, other, len);
                b.read(0, &mut seen);
                if !exact(&seen, other, &data, 0xa5) {
                    return Err(what("copy_to"));
                }
            }
        }
    }
    Ok(())
}

/// Whether `bytes` holds `data` at `at` and `guard` everywhere else.
fn exact(bytes: &[u8], at: usize, data: &[u8], guard: u8) -> bool {
    bytes[at..at + data.len()] == *data
        && bytes[..at].iter().all(|&b| b == guard)
        && bytes[at + data.len()..].iter().all(|&b| b == guard)
}

/// `buf` from its first 16-byte-aligned byte, [`CHECK_SPAN`] bytes.
fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let pad = (buf.as_ptr() as usize).wrapping_neg() % 16;
    &mut buf[pad..pad + CHECK_SPAN]
}
