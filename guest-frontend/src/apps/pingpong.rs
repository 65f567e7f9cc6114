//! `pingpong`: connects to the back-end with the ping-pong feature, shares one granted page and
//! an event channel with it, and bounces `rounds` requests through it (default 10 000), checking
//! every reply word. Prints the round-trip distribution in counter ticks as a `BENCH` line.
//!
//! Settings: `rounds` (default 10000), `restart` (1: reset the VM once after connecting, to show
//! the back-end reconnects), `accounting_tag` (N: the hypervisor's accounting is printed, tagged
//! N, right after the rounds: what the scheduler did meanwhile).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use shared_abi::handshake::Frontend;
use shared_abi::pingpong::{self, PAYLOAD_WORDS, REPLY, REPLY_WORDS, REQUEST_WORDS, SEQ_WORD};
use vm_runtime::page::Page;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, grant, println, psci, StartInfo};

use crate::link::Link;

/// How long one reply may take before the run fails (generous: emulation, shared host).
const REPLY_TIMEOUT_MS: u64 = 5_000;

pub fn run(info: &StartInfo<'static>) {
    match ping(info) {
        Ok(()) => {}
        Err(why) => println!("REPORT fail: {why}"),
    }
}

fn ping(info: &StartInfo<'static>) -> Result<(), alloc::string::String> {
    use alloc::format;
    let rounds = super::number(info, "rounds", 10_000).ok_or("bad rounds")?;
    let restart = super::number(info, "restart", 0).ok_or("bad restart")?;
    let accounting_tag = super::number(info, "accounting_tag", 0).ok_or("bad accounting_tag")?;
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    grant::init(1).map_err(|e| format!("grant table: {e:?}"))?;
    let mut link = Link::open(info)?;
    let page = Page::leak();
    let gref =
        grant::grant(link.backend, page.gpa(), false).map_err(|e| format!("grant: {e:?}"))?;
    let data_port =
        evtchn::alloc_unbound(link.backend).map_err(|e| format!("alloc_unbound: {e:?}"))?;
    let offer = Frontend {
        tx_ring_ref: gref,
        data_port,
        features: pingpong::FEATURE,
        ..Frontend::initialising()
    };
    let backend = link.connect(offer, 10_000)?;
    println!(
        "connected to back-end vm {} (boot {}): page ref {gref}, data port {data_port}, features {:#x}",
        link.backend, info.boot_count, backend.features
    );
    if backend.features & pingpong::FEATURE == 0 {
        return Err("back-end does not offer the ping-pong feature".into());
    }
    if restart == 1 && info.boot_count == 1 {
        println!("restarting while connected (PSCI SYSTEM_RESET)");
        psci::system_reset();
    }
    let words = page.words();
    let mut ticks = Vec::with_capacity(rounds as usize);
    for seq in 1..=rounds {
        for (i, w) in REQUEST_WORDS.enumerate() {
            words[w].store(pingpong::payload(seq, i), Ordering::Relaxed);
        }
        let start = Instant::now();
        words[SEQ_WORD].store(seq, Ordering::Release);
        evtchn::send(data_port).map_err(|e| format!("send in round {seq}: {e:?}"))?;
        let answered = || words[SEQ_WORD].load(Ordering::Acquire) == seq | REPLY;
        let deadline = timer::now() + timer::ms_to_ticks(REPLY_TIMEOUT_MS);
        while !answered() {
            if timer::now() >= deadline {
                return Err(format!(
                    "no reply to round {seq} within {REPLY_TIMEOUT_MS} ms"
                ));
            }
            evtchn::wait(data_port, timer::ms_to_ticks(100));
        }
        ticks.push(start.elapsed_ticks());
        for (i, w) in REPLY_WORDS.enumerate() {
            let got = words[w].load(Ordering::Relaxed);
            let want = pingpong::reply(pingpong::payload(seq, i));
            if got != want {
                return Err(format!(
                    "round {seq}: reply word {i} is {got:#x}, expected {want:#x}"
                ));
            }
        }
        if seq % 2_000 == 0 {
            println!("{seq}/{rounds} rounds");
        }
    }
    if accounting_tag != 0 {
        let _ = vm_runtime::hypercall::accounting_report(accounting_tag);
    }
    // Consume a late duplicate notification so the close below waits on a quiet port.
    let _ = evtchn::take(data_port);
    ticks.sort_unstable();
    let median = ticks.get(ticks.len() / 2).copied().unwrap_or(0);
    println!(
        "BENCH evtchn_roundtrip_ticks min={} median={median} max={} n={} freq_hz={} ({} us median)",
        ticks.first().copied().unwrap_or(0),
        ticks.last().copied().unwrap_or(0),
        ticks.len(),
        timer::frequency(),
        timer::ticks_to_us(median)
    );
    link.close(5_000)?;
    // The back-end unmapped the page before closing; only then can the ref be revoked.
    grant::end(gref).map_err(|e| format!("ending the grant after close: {e:?}"))?;
    let _ = evtchn::close(data_port);
    println!(
        "REPORT ok: {rounds} ping-pong rounds, {} x {PAYLOAD_WORDS} words checked each way",
        ticks.len()
    );
    Ok(())
}
