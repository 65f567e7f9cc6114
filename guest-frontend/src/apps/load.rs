//! `load`: a neighbour that keeps the hypervisor as busy as one guest can, for the lock-hold-time
//! tests and the bench's bystander figures. Setting `load` picks the kind, `duration_ms` (default
//! 10 000) how long it lasts:
//! - `console`: full console lines as fast as the console hypercall takes them;
//! - `reset`: PSCI SYSTEM_RESET at once on every boot, for `rounds` boots (each one zeroes and
//!   reloads all of its RAM);
//! - `source`: grants one page to VM `peer` as ref 1 and allocates port 1 unbound for it, then
//!   waits out the duration: the other end of `copy` and `evtchn`;
//! - `copy`: GRANT_COPY batches of the most ops a call takes, each a whole page from the
//!   `source`'s ref 1 into its own memory;
//! - `evtchn`: binds to the `source`'s port 1 and sends events as fast as they go.
//!
//! Each prints how much it did in its `REPORT ok` line.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use shared_abi::grant::{CopyOp, CopyPtr, MAX_BATCH};
use shared_abi::layout::PAGE_SIZE;
use vm_runtime::page::Page;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, grant, println, psci, setting, StartInfo};

/// The ref and port a `source` offers (its first of each, so no handshake is needed).
const SOURCE_REF: u32 = 1;
const SOURCE_PORT: u32 = 1;

pub fn run(info: &StartInfo<'static>) {
    let result = (|| {
        let duration_ms = super::number(info, "duration_ms", 10_000).ok_or("bad duration_ms")?;
        let peer = super::number(info, "peer", 0).ok_or("bad peer")? as u16;
        match setting(info.settings, "load").unwrap_or("") {
            "console" => Ok(console(duration_ms)),
            "reset" => reset(info),
            "source" => source(peer, duration_ms),
            "copy" => copy(peer, duration_ms),
            "evtchn" => storm(peer, duration_ms),
            other => Err(format!(
                "load must be console, reset, source, copy or evtchn, not '{other}'"
            )),
        }
    })();
    match result {
        Ok(done) => println!("REPORT ok: load {done}"),
        Err(why) => println!("REPORT fail: {why}"),
    }
}

fn console(duration_ms: u64) -> String {
    let start = Instant::now();
    let mut lines = 0u64;
    while start.elapsed_ms() < duration_ms {
        println!("console flood line {lines:>10} ..............................................");
        lines += 1;
    }
    // The hypervisor rate-limits consoles: let the budget refill so the report is printed.
    timer::sleep_ms(500);
    format!("console: wrote {lines} lines in {duration_ms} ms")
}

fn reset(info: &StartInfo<'static>) -> Result<String, String> {
    let rounds = super::number(info, "rounds", 10).ok_or("bad rounds")?;
    if u64::from(info.boot_count) < rounds {
        psci::system_reset();
    }
    Ok(format!(
        "reset: {} boots of {} MiB each",
        info.boot_count,
        info.ram_bytes >> 20
    ))
}

fn source(peer: u16, duration_ms: u64) -> Result<String, String> {
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    grant::init(1).map_err(|e| format!("grant table: {e:?}"))?;
    let page = Page::leak();
    let granted = grant::grant(peer, page.gpa(), true);
    let port = evtchn::alloc_unbound(peer);
    if granted != Ok(SOURCE_REF) || port != Ok(SOURCE_PORT) {
        return Err(format!(
            "expected ref and port 1, got {granted:?} and {port:?}"
        ));
    }
    timer::sleep_ms(duration_ms);
    let events = u64::from(evtchn::take(SOURCE_PORT));
    Ok(format!(
        "source: served vm {peer} for {duration_ms} ms ({events} event pending at the end)"
    ))
}

fn copy(peer: u16, duration_ms: u64) -> Result<String, String> {
    let pages = Page::leak_many(MAX_BATCH as usize);
    let mut ops: Vec<CopyOp> = pages
        .iter()
        .map(|page| CopyOp {
            src: CopyPtr::grant(peer, SOURCE_REF, 0),
            dst: CopyPtr::own(page.gpa()),
            len: PAGE_SIZE as u16,
            status: 0,
        })
        .collect();
    let start = Instant::now();
    let (mut calls, mut refused) = (0u64, 0u64);
    while start.elapsed_ms() < duration_ms {
        // Until the source has granted, copies fail with BadRef: those are counted, not fatal.
        if grant::copy(&mut ops).is_err() || ops.iter().any(|op| op.status != 0) {
            refused += 1;
            timer::sleep_ms(1);
        } else {
            calls += 1;
        }
    }
    Ok(format!(
        "copy: {calls} calls of {} KiB ({refused} refused before the source was ready)",
        MAX_BATCH * PAGE_SIZE / 1024
    ))
}

fn storm(peer: u16, duration_ms: u64) -> Result<String, String> {
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    let start = Instant::now();
    let port = loop {
        match evtchn::bind_interdomain(peer, SOURCE_PORT) {
            Ok(port) => break port,
            Err(_) if start.elapsed_ms() < duration_ms => timer::sleep_ms(1),
            Err(e) => return Err(format!("binding to vm {peer}'s port 1: {e:?}")),
        }
    };
    let mut sends = 0u64;
    while start.elapsed_ms() < duration_ms {
        if evtchn::send(port).is_err() {
            // The source stopped first: its end of the channel is gone.
            break;
        }
        sends += 1;
    }
    Ok(format!("evtchn: {sends} sends to vm {peer}"))
}
