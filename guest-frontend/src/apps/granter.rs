//! `granter`: the cooperating side of the grant and event-channel attack tests. It grants, in
//! this order (so the refs are known without a handshake): ref 1 = page A read-write to `peer`,
//! ref 2 = page B read-only to `peer`, ref 3 = page C to `other`, ref 4 = granted to `peer` and
//! revoked at once, ref 5 = the first page of its own image read-only to `peer` (its shared
//! code: not a frame of its own, so the hypervisor must refuse it); and allocates unbound port 1 for `peer` and port 2 for `other`. Page A and B
//! start with [`MARKER`]. Then it waits for `peer` to map ref 1 and, with `die = 1`, dies by a
//! stage-2 fault while the page is mapped; otherwise it waits for the peer to unmap, checks what
//! the peer wrote, revokes everything and reports.

use core::sync::atomic::Ordering;

use vm_runtime::page::Page;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, grant, println, StartInfo};

pub use shared_abi::grant::test_pattern::{MARKER, PEER_WROTE};

const WAIT_MS: u64 = 20_000;

pub fn run(info: &StartInfo<'static>) {
    if let Err(why) = serve(info) {
        println!("REPORT fail: {why}");
    }
}

fn serve(info: &StartInfo<'static>) -> Result<(), alloc::string::String> {
    use alloc::format;
    let peer = super::number(info, "peer", 0).ok_or("bad peer")? as u16;
    let other = super::number(info, "other", 0).ok_or("bad other")? as u16;
    let die = super::number(info, "die", 0).ok_or("bad die")? == 1;
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    grant::init(1).map_err(|e| format!("grant table: {e:?}"))?;
    let [a, b, c, d] = [Page::leak(), Page::leak(), Page::leak(), Page::leak()];
    a.words()[0].store(MARKER, Ordering::Relaxed);
    b.words()[0].store(MARKER, Ordering::Relaxed);
    let refs = [
        grant::grant(peer, a.gpa(), false),
        grant::grant(peer, b.gpa(), true),
        grant::grant(other, c.gpa(), false),
        grant::grant(peer, d.gpa(), false),
        grant::grant(peer, shared_abi::layout::GUEST_RAM_BASE, true),
    ];
    if refs != [Ok(1), Ok(2), Ok(3), Ok(4), Ok(5)] {
        return Err(format!("unexpected refs {refs:?}"));
    }
    grant::end(4).map_err(|e| format!("revoking ref 4: {e:?}"))?;
    let ports = [evtchn::alloc_unbound(peer), evtchn::alloc_unbound(other)];
    if ports != [Ok(1), Ok(2)] {
        return Err(format!("unexpected ports {ports:?}"));
    }
    println!("granted refs 1-3 and 5 (4 revoked) and ports 1-2; waiting for vm {peer}");
    let start = Instant::now();
    // The peer's use may be brief; its write into page A proves it happened.
    while !grant::in_use(1) && a.words()[1].load(Ordering::Acquire) != PEER_WROTE {
        if start.elapsed_ms() > WAIT_MS {
            return Err(format!("vm {peer} never mapped ref 1"));
        }
        timer::sleep_ms(5);
    }
    if die {
        println!("ref 1 is mapped by vm {peer}; dying now with it mapped");
        // An access outside our RAM is a stage-2 fault: the hypervisor kills us and must keep
        // page A alive for the peer.
        let _ = vm_runtime::probe::read_u64_at(0x0900_0000);
        return Err("survived a stage-2 fault".into());
    }
    // Done when the peer has written page A (its last legitimate step) and unmapped everything.
    while grant::in_use(1) || grant::in_use(2) || a.words()[1].load(Ordering::Acquire) != PEER_WROTE
    {
        if start.elapsed_ms() > WAIT_MS {
            return Err(format!(
                "vm {peer} never wrote page A and unmapped refs 1 and 2 (word 1 is {:#x})",
                a.words()[1].load(Ordering::Acquire)
            ));
        }
        timer::sleep_ms(5);
    }
    for gref in [1, 2, 3, 5] {
        grant::end(gref).map_err(|e| format!("revoking ref {gref}: {e:?}"))?;
    }
    // Page B was read-only for the peer: it must be exactly as we wrote it, whatever the peer
    // (or a device it drives) tried.
    let b_words = b.words();
    if b_words[0].load(Ordering::Acquire) != MARKER
        || b_words[1..].iter().any(|w| w.load(Ordering::Acquire) != 0)
    {
        return Err("read-only page B was modified".into());
    }
    println!("read-only page B is unchanged");
    println!("REPORT ok: granter saw the peer's write and revoked every ref");
    Ok(())
}
