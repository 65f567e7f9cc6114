//! driver-domain: the sluice driver domain. It serves one back-end per connected guest (see
//! `backend`); the NIC passthrough and the switch come with the network issues. It powers off
//! when every front-end VM has stopped for good.
#![no_std]
#![no_main]

extern crate alloc;

mod backend;

use alloc::vec::Vec;

use backend::Connection;
use vm_runtime::timer;
use vm_runtime::{evtchn, println, report, StartInfo};

vm_runtime::entry!(main);

fn main(info: &StartInfo<'static>) {
    println!(
        "driver domain {} up: vm {}, {} MiB, {} front-end(s); NIC passthrough not configured yet",
        info.name,
        info.vm_id,
        info.ram_bytes >> 20,
        info.peers.count_ones()
    );
    if info.peers == 0 {
        report::hello(info);
        return;
    }
    if let Err(e) = evtchn::init() {
        println!("REPORT fail: event channels: {e:?}");
        return;
    }
    let mut connections: Vec<Connection> = (1..64u16)
        .filter(|id| info.peers & (1 << id) != 0)
        .filter_map(|id| {
            let conn = Connection::open(id);
            if conn.is_none() {
                println!("front-end {id}: no valid control page; not serving it");
            }
            conn
        })
        .collect();
    // Control events sent before our event page existed were dropped, so look at every control
    // page at the start and whenever a wait times out.
    let mut recheck = true;
    loop {
        let mut busy = false;
        for conn in &mut connections {
            if evtchn::take(conn.control_port()) || recheck {
                conn.step();
            }
            while conn.serve() {
                busy = true;
            }
        }
        recheck = false;
        if connections.iter().all(Connection::finished) {
            break;
        }
        if !busy {
            // Sleep until any of our ports has an event (or a periodic re-check).
            let ports: Vec<u32> = connections
                .iter()
                .flat_map(|c| [Some(c.control_port()), c.data_port()])
                .flatten()
                .collect();
            let deadline = timer::now() + timer::ms_to_ticks(50);
            recheck = !timer::wait_until(deadline, || ports.iter().any(|&p| evtchn::pending(p)));
        }
    }
    let served: u64 = connections.iter().map(|c| c.counters.requests).sum();
    let bad: u64 = connections.iter().map(|c| c.counters.bad_words).sum();
    println!(
        "REPORT ok: {} served {} front-end(s), {served} ping-pong requests, {bad} bad words",
        info.name,
        connections.len()
    );
}
