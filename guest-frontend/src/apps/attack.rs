//! `attack`: a hostile peer of the `granter` app (VM id `peer`). `mode`:
//! - `errors` (default): tries every misuse of grants and event channels and checks each gets its
//!   documented status; then uses its legitimate mappings (checking the marker, writing page A)
//!   and unmaps them.
//! - `write-ro`: maps the read-only ref 2 read-only and writes it: the hypervisor must kill us.
//! - `outlive`: maps ref 1 and keeps using it for `hold_ms` after mapping (the granter dies
//!   meanwhile in the test), then unmaps it.
//! - `flood`: binds port 1 of `peer` and sends on it as fast as it can for `flood_ms`.
//! - `bench`: times GRANT_MAP + GRANT_UNMAP of ref 1 and GRANT_COPY of it, `rounds` times each,
//!   and prints `BENCH` lines (medians in counter ticks).
//!
//! Every mode except `outlive` also does the granter's expected legitimate use (map ref 1, write
//! [`PEER_WROTE`], unmap), so the granter can finish.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use shared_abi::grant::{CopyOp, CopyPtr, MapOp, UnmapOp, GRANT_WINDOW_BASE, MAP_READONLY};
use shared_abi::hypercall::Status;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};
use vm_runtime::page::Page;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, grant, println, StartInfo};

use super::granter::{MARKER, PEER_WROTE};

const WAIT_MS: u64 = 20_000;

pub fn run(info: &StartInfo<'static>) {
    match attack(info) {
        Ok(summary) => println!("REPORT ok: {summary}"),
        Err(why) => println!("REPORT fail: {why}"),
    }
}

/// Retries mapping `gref` of `peer` until the granter has set it up.
fn map_when_ready(peer: u16, gref: u32, readonly: bool) -> Result<grant::Mapping, String> {
    let start = Instant::now();
    loop {
        match grant::map(peer, gref, readonly) {
            Ok(m) => return Ok(m),
            Err(Status::BadRef) if start.elapsed_ms() < WAIT_MS => timer::sleep_ms(5),
            Err(e) => return Err(format!("mapping ref {gref} of vm {peer}: {e:?}")),
        }
    }
}

fn expect(what: &str, got: Result<(), Status>, want: Status) -> Result<(), String> {
    let got = got.err().unwrap_or(Status::Ok);
    if got == want {
        println!("attack: {what} -> {got:?} as documented");
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

fn one_map(granter: u16, gref: u32, flags: u16, dest_gpa: u64) -> Result<(), Status> {
    let mut op = [MapOp {
        granter,
        flags,
        gref,
        dest_gpa,
        status: 0,
    }];
    grant::map_raw(&mut op)?;
    grant::op_status(op[0].status)
}

fn one_copy(src: CopyPtr, dst: CopyPtr, len: u16) -> Result<(), Status> {
    let mut op = [CopyOp {
        src,
        dst,
        len,
        status: 0,
    }];
    grant::copy(&mut op)?;
    grant::op_status(op[0].status)
}

fn attack(info: &StartInfo<'static>) -> Result<String, String> {
    let peer = super::number(info, "peer", 0).ok_or("bad peer")? as u16;
    let mode = vm_runtime::setting(info.settings, "mode").unwrap_or("errors");
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    match mode {
        "errors" => errors(info, peer),
        "write-ro" => {
            // Hold the read-only mapping across the legitimate use, so the granter (which
            // finishes once ref 1 was used and nothing is mapped) is still waiting when we write.
            let page = map_when_ready(peer, 2, true)?;
            legitimate_use(peer)?;
            println!("attack: writing the read-only grant at {:#x}", page.gpa());
            page.words()[1].store(1, Ordering::Relaxed);
            Err("wrote a read-only grant and survived".into())
        }
        "outlive" => {
            let hold_ms = super::number(info, "hold_ms", 1_000).ok_or("bad hold_ms")?;
            let page = map_when_ready(peer, 1, false)?;
            let start = Instant::now();
            let mut rounds = 0u64;
            while start.elapsed_ms() < hold_ms {
                let w = page.words();
                if w[0].load(Ordering::Relaxed) != MARKER {
                    return Err(format!("marker changed after {rounds} rounds"));
                }
                w[2].store(rounds, Ordering::Relaxed);
                rounds += 1;
                timer::sleep_ms(1);
            }
            page.unmap().map_err(|e| format!("unmap: {e:?}"))?;
            Ok(format!(
                "used the page {rounds} times over {hold_ms} ms, then unmapped it"
            ))
        }
        "flood" => {
            let flood_ms = super::number(info, "flood_ms", 2_000).ok_or("bad flood_ms")?;
            let start = Instant::now();
            let port = loop {
                match evtchn::bind_interdomain(peer, 1) {
                    Ok(port) => break port,
                    Err(_) if start.elapsed_ms() < WAIT_MS => timer::sleep_ms(5),
                    Err(e) => return Err(format!("bind: {e:?}")),
                }
            };
            legitimate_use(peer)?;
            let flood_start = Instant::now();
            let mut sends = 0u64;
            while flood_start.elapsed_ms() < flood_ms {
                for _ in 0..1000 {
                    let _ = evtchn::send(port);
                }
                sends += 1000;
            }
            Ok(format!("flooded {sends} sends in {flood_ms} ms"))
        }
        "bench" => {
            let rounds = super::number(info, "rounds", 1_000).ok_or("bad rounds")?;
            let summary = bench(peer, rounds)?;
            legitimate_use(peer)?;
            Ok(summary)
        }
        other => Err(format!("unknown mode '{other}'")),
    }
}

/// What the granter waits for: ref 1 mapped, [`PEER_WROTE`] written into it, unmapped.
fn legitimate_use(peer: u16) -> Result<(), String> {
    let a = map_when_ready(peer, 1, false)?;
    a.words()[1].store(PEER_WROTE, Ordering::Release);
    a.unmap().map_err(|e| format!("unmap: {e:?}"))
}

fn median_line(name: &str, samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    println!(
        "BENCH {name} min={} median={median} max={} n={} freq_hz={}",
        samples.first().copied().unwrap_or(0),
        samples.last().copied().unwrap_or(0),
        samples.len(),
        timer::frequency()
    );
    median
}

fn bench(peer: u16, rounds: u64) -> Result<String, String> {
    use alloc::vec::Vec;
    // Wait until the granter is ready (ref 1 maps), then measure.
    map_when_ready(peer, 1, false)?
        .unmap()
        .map_err(|e| format!("unmap: {e:?}"))?;
    let mut map_ticks = Vec::new();
    let mut unmap_ticks = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let page = grant::map(peer, 1, false).map_err(|e| format!("map: {e:?}"))?;
        let t1 = Instant::now();
        page.unmap().map_err(|e| format!("unmap: {e:?}"))?;
        map_ticks.push(t1.ticks_since(t0));
        unmap_ticks.push(t1.elapsed_ticks());
    }
    let own = Page::leak_many(1);
    let dst = own[0].gpa();
    let mut copy_page = Vec::new();
    let mut copy_batch = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        one_copy(CopyPtr::grant(peer, 1, 0), CopyPtr::own(dst), 4096)
            .map_err(|e| format!("copy: {e:?}"))?;
        copy_page.push(t0.elapsed_ticks());
        // 64 ops of 64 bytes in one call: what a back-end moving small packets would do.
        let mut ops: Vec<CopyOp> = (0..64)
            .map(|i| CopyOp {
                src: CopyPtr::grant(peer, 1, i * 64),
                dst: CopyPtr::own(dst + i * 64),
                len: 64,
                status: 0,
            })
            .collect();
        let t0 = Instant::now();
        grant::copy(&mut ops).map_err(|e| format!("batch copy: {e:?}"))?;
        copy_batch.push(t0.elapsed_ticks());
        if ops.iter().any(|op| op.status != 0) {
            return Err("a batched copy op failed".into());
        }
    }
    let map = median_line("grant_map_ticks", &mut map_ticks);
    let unmap = median_line("grant_unmap_ticks", &mut unmap_ticks);
    let copy = median_line("grant_copy_4k_ticks", &mut copy_page);
    let batch = median_line("grant_copy_64x64b_ticks", &mut copy_batch);
    Ok(format!(
        "grant bench: {rounds} rounds; medians map {map}, unmap {unmap}, copy 4 KiB {copy}, 64 x 64 B {batch} ticks"
    ))
}

fn errors(info: &StartInfo<'static>, peer: u16) -> Result<String, String> {
    let a = map_when_ready(peer, 1, false)?;
    if a.words()[0].load(Ordering::Relaxed) != MARKER {
        return Err("page A does not hold the granter's marker".into());
    }
    let slot = GRANT_WINDOW_BASE + 64 * PAGE_SIZE;
    expect(
        "map a ref granted to another VM",
        one_map(peer, 3, 0, slot),
        Status::Denied,
    )?;
    expect(
        "map a read-only ref read-write",
        one_map(peer, 2, 0, slot),
        Status::ReadOnly,
    )?;
    expect(
        "map a revoked ref",
        one_map(peer, 4, 0, slot),
        Status::BadRef,
    )?;
    expect(
        "map a ref beyond the table",
        one_map(peer, 100_000, 0, slot),
        Status::BadRef,
    )?;
    expect(
        "map from ourselves",
        one_map(info.vm_id, 1, 0, slot),
        Status::InvalidArgument,
    )?;
    expect(
        "map from a VM that does not exist",
        one_map(60, 1, 0, slot),
        Status::InvalidArgument,
    )?;
    expect(
        "map over our own RAM",
        one_map(peer, 1, 0, GUEST_RAM_BASE),
        Status::InvalidArgument,
    )?;
    expect(
        "map at an unaligned address",
        one_map(peer, 1, 0, slot + 8),
        Status::InvalidArgument,
    )?;
    expect(
        "map a ref of the granter's shared code",
        one_map(peer, 5, MAP_READONLY, slot),
        Status::BadFrame,
    )?;
    expect(
        "map over an existing mapping",
        one_map(peer, 1, 0, a.gpa()),
        Status::Busy,
    )?;
    expect(
        "unknown map flags",
        one_map(peer, 1, 0x80, slot),
        Status::InvalidArgument,
    )?;
    let mut unmap = [UnmapOp {
        dest_gpa: slot + PAGE_SIZE,
        status: 0,
    }];
    grant::unmap_raw(&mut unmap).map_err(|e| format!("unmap call: {e:?}"))?;
    expect(
        "unmap an address that is not mapped",
        grant::op_status(unmap[0].status),
        Status::NotMapped,
    )?;
    expect(
        "batch of 0 ops",
        grant::map_raw(&mut []),
        Status::InvalidArgument,
    )?;
    let own = Page::leak();
    expect(
        "copy into a read-only grant",
        one_copy(CopyPtr::own(own.gpa()), CopyPtr::grant(peer, 2, 0), 8),
        Status::ReadOnly,
    )?;
    expect(
        "copy across a frame boundary",
        one_copy(
            CopyPtr::grant(peer, 1, PAGE_SIZE - 4),
            CopyPtr::own(own.gpa()),
            8,
        ),
        Status::InvalidArgument,
    )?;
    expect(
        "copy from a ref of the granter's shared code",
        one_copy(CopyPtr::grant(peer, 5, 0), CopyPtr::own(own.gpa()), 8),
        Status::BadFrame,
    )?;
    expect(
        "copy into our own shared code",
        one_copy(CopyPtr::grant(peer, 1, 0), CopyPtr::own(GUEST_RAM_BASE), 8),
        Status::InvalidArgument,
    )?;
    expect(
        "copy from a ref granted to another VM",
        one_copy(CopyPtr::grant(peer, 3, 0), CopyPtr::own(own.gpa()), 8),
        Status::Denied,
    )?;
    expect(
        "copy into the hypervisor's memory",
        one_copy(
            CopyPtr::grant(peer, 1, 0),
            CopyPtr::own(0x4020_0000 + (256 << 20)),
            8,
        ),
        Status::InvalidArgument,
    )?;
    one_copy(CopyPtr::grant(peer, 1, 0), CopyPtr::own(own.gpa()), 8)
        .map_err(|e| format!("legitimate copy: {e:?}"))?;
    if own.words()[0].load(Ordering::Relaxed) != MARKER {
        return Err("grant copy did not bring the marker".into());
    }
    // Event channels: ports we do not own, ports bound for someone else.
    expect(
        "bind a port allocated for another VM",
        evtchn::bind_interdomain(peer, 2).map(|_| ()),
        Status::Denied,
    )?;
    expect(
        "bind a port that does not exist",
        evtchn::bind_interdomain(peer, 999).map(|_| ()),
        Status::BadPort,
    )?;
    expect(
        "send on a port we do not have",
        evtchn::send(77),
        Status::BadPort,
    )?;
    expect("send on port 0", evtchn::send(0), Status::BadPort)?;
    expect(
        "close a port we do not have",
        evtchn::close(78),
        Status::BadPort,
    )?;
    expect(
        "unmask a port out of range",
        evtchn::unmask(100_000),
        Status::BadPort,
    )?;
    let port = evtchn::bind_interdomain(peer, 1).map_err(|e| format!("legitimate bind: {e:?}"))?;
    expect(
        "bind the same port twice",
        evtchn::bind_interdomain(peer, 1).map(|_| ()),
        Status::BadPort,
    )?;
    expect("send on our bound port", evtchn::send(port), Status::Ok)?;
    // Legitimate use, then clean up so the granter can revoke.
    a.words()[1].store(PEER_WROTE, Ordering::Release);
    let b = grant::map(peer, 2, true).map_err(|e| format!("read-only map: {e:?}"))?;
    if b.words()[0].load(Ordering::Relaxed) != MARKER {
        return Err("page B does not hold the marker".into());
    }
    a.unmap().map_err(|e| format!("unmap A: {e:?}"))?;
    b.unmap().map_err(|e| format!("unmap B: {e:?}"))?;
    let _ = evtchn::close(port);
    Ok(String::from(
        "every misuse of grants and event channels got its documented status",
    ))
}
