//! driver-domain: the sluice driver domain. It owns the NIC the hypervisor passes through (see
//! `nic`: virtio-net over PCI behind the SMMU), serves one back-end per connected guest (see
//! `backend` and `netback`, or `emunic`: the device model of a guest's emulated NIC), and
//! switches frames between the guests, the NIC and its own IP
//! endpoint, which answers ARP, ping and echo on the NIC's MAC (see `fabric`). It powers off
//! when every front-end VM has stopped for good and its NIC serving time is over.
#![no_std]
#![no_main]
// The trusted base: only the NIC driver and its DMA memory (`nic`, `dma`) may hold code the
// compiler cannot check; everything else here is safe Rust over vm-runtime and the library.
#![deny(unsafe_code)]

extern crate alloc;

mod backend;
#[allow(unsafe_code)]
mod dma;
mod emunic;
mod fabric;
mod netback;
#[allow(unsafe_code)]
mod nic;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use backend::Connection;
use fabric::Fabric;
use shared_abi::grant::test_pattern::{MARKER, PEER_WROTE};
use shared_abi::handshake::State;
use shared_abi::start_info::setting;
use smoltcp::wire::{IpCidr, Ipv4Address};
use vm_net::ECHO_PORT;
use vm_runtime::timer;
use vm_runtime::{evtchn, grant, println, report, setting_bool_or, setting_u64_or, StartInfo};

vm_runtime::entry!(main);

/// How long the NIC is served when no front-end keeps the domain alive (setting `nic_serve_ms`).
const DEFAULT_NIC_SERVE_MS: u64 = 10_000;
/// Carries out a test crash (see `driver_domain::crash`).
fn crash_now(plan: driver_domain::crash::CrashPlan) -> ! {
    use driver_domain::crash::CrashKind;
    let kind = plan.kind;
    if plan.irqs_masked_ms > 0 {
        println!(
            "test crash: IRQs masked for {} ms first",
            plan.irqs_masked_ms
        );
        vm_runtime::gic::disable_irqs();
        let until = timer::now() + timer::ms_to_ticks(plan.irqs_masked_ms);
        while timer::now() < until {
            core::hint::spin_loop();
        }
    }
    // The time (the counter every VM shares) is where the restart's phases start.
    println!("test crash: {kind:?} now (at {} us)", now_us());
    match kind {
        // Nothing is mapped there at stage 2: the hypervisor kills the VM at this load.
        CrashKind::Fault => {
            let _ = vm_runtime::probe::read_u64_at(0x3000_0000);
            panic!("the faulting load returned")
        }
        CrashKind::Panic => panic!("test crash"),
        CrashKind::Reset => vm_runtime::psci::system_reset(),
    }
}

/// The shared counter in microseconds: every VM and the hypervisor read the same one, so the
/// restart's phases line up across VMs.
fn now_us() -> u64 {
    timer::ticks_to_us(timer::now())
}

/// How often the control pages of the connections not finished are read again, without an
/// event (ms): a lost control event then costs at most this much, not the connection (in a
/// handshake) or the domain's end (a front-end that stopped unseen kept it serving forever).
const CONTROL_RECHECK_MS: u64 = 50;
/// How long after the periodic look found a change with no event its event may still come
/// before the change is reported as unannounced.
const UNANNOUNCED_GRACE_MS: u64 = 100;

/// A control section change the periodic look found with no event (yet).
struct Unannounced {
    frontend: u16,
    before: State,
    after: State,
    at_ms: u64,
}

/// Counters line period while serving the NIC.
const COUNTERS_EVERY_MS: u64 = 2_000;

fn main(info: &StartInfo<'static>) {
    let entered_us = now_us();
    let nic_text = match info.passthrough {
        Some(rid) => format!(
            "PCI {:02x}:{:02x}.{} passed through",
            rid >> 8,
            (rid >> 3) & 0x1f,
            rid & 7
        ),
        None => String::from("no NIC"),
    };
    let crash = match driver_domain::crash::plan(info.settings, info.boot_count) {
        Ok(plan) => plan.map(|p| (p, timer::now() + timer::ms_to_ticks(p.after_ms))),
        Err(e) => {
            println!("REPORT fail: {e}");
            return;
        }
    };
    // The front-ends' identities, read once from our own start-info (no guest can write it).
    let vifs = match driver_domain::vif::Vifs::from_settings(info.settings) {
        Ok(vifs) => vifs,
        Err(e) => {
            println!("REPORT fail: {e}");
            return;
        }
    };
    // The para-virtual front-ends' handshakes start before the NIC comes up (issue 14): each
    // front-end sees our `InitWait` (`Connection::open`) and resets and offers its rings while
    // we bring the NIC up, so the first pass of the serving loop maps every offer at once. On a restart the
    // guests wait for this; the NIC bring-up is tens of ms and more.
    let mut connections: Vec<Connection> = Vec::new();
    let mut events_us = 0;
    if info.peers != 0 {
        if let Err(e) = evtchn::init() {
            println!("REPORT fail: event channels: {e:?}");
            return;
        }
        events_us = now_us();
        connections = (1..64u16)
            .filter(|id| info.peers & (1 << id) != 0)
            .filter(|&id| !vifs.is_emulated(id))
            .filter_map(|id| {
                let conn = Connection::open(id);
                if conn.is_none() {
                    println!("front-end {id}: no valid control page; not serving it");
                }
                conn
            })
            .collect();
    }
    let offered_us = now_us();
    // After the offers: a console line can take milliseconds when every VM prints at once.
    println!(
        "driver domain {} up: vm {}, {} MiB, {} front-end(s), {nic_text}",
        info.name,
        info.vm_id,
        info.ram_bytes >> 20,
        info.peers.count_ones()
    );
    let nic = info.passthrough.and_then(|rid| start_nic(info, rid));
    let nic_up_us = now_us();
    if info.peers == 0 && nic.is_none() {
        report::hello(info);
        return;
    }
    if info.peers == 0 {
        if let Err(e) = evtchn::init() {
            println!("REPORT fail: event channels: {e:?}");
            return;
        }
    }
    let serve_ms = match setting_u64_or(info.settings, "nic_serve_ms", DEFAULT_NIC_SERVE_MS) {
        Ok(ms) => ms,
        Err(e) => {
            println!("REPORT fail: {e}");
            return;
        }
    };
    let has_nic = nic.is_some();
    let iperf_server = match setting(info.settings, "iperf") {
        None => false,
        Some("server") => true,
        Some(other) => {
            println!(
                "REPORT fail: setting iperf = {other:?}: the driver domain can only be \"server\""
            );
            return;
        }
    };
    let mut fabric = Fabric::new(
        nic.as_ref().map(|n| (n.mac, n.address, n.gateway)),
        iperf_server,
        vifs,
    );
    fabric.iperf_marks = match setting_bool_or(info.settings, "iperf_accounting", false) {
        Ok(false) => None,
        Ok(true) => Some(Default::default()),
        Err(e) => {
            println!("REPORT fail: {e}");
            return;
        }
    };
    if let Some(nic) = nic {
        // The gateway ping says at boot that the NIC works; on a restart with front-ends its
        // 20-30 ms would only hold the waiting guests back (issue 14: they are what the
        // recovery waits for). Without front-ends it is the one sign the new NIC works.
        if info.boot_count > 1 && info.peers != 0 {
            println!("NIC ping gateway {}: skipped on a restart", nic.gateway);
        } else {
            ping_gateway(&mut fabric, nic.gateway);
        }
        if let Some(rogue) = nic.rogue {
            rogue.finish();
        }
    }
    let gateway_us = now_us();
    // Issue 16: the balloon targets this driver domain sets (its `balloon_control`).
    let mut balloon_control =
        match driver_domain::balloon_control::Control::from_settings(info.settings) {
            Ok(control) => control,
            Err(e) => {
                println!("REPORT fail: {e}");
                return;
            }
        };
    let serve_until = timer::now() + timer::ms_to_ticks(serve_ms);
    let mut next_counters = timer::now() + timer::ms_to_ticks(COUNTERS_EVERY_MS);
    // Guests with the emulated NIC get a device model on their request page instead of a
    // para-virtual back-end on a control page.
    let emulated: Vec<u16> = (1..64u16)
        .filter(|&id| info.peers & (1 << id) != 0 && fabric.vifs.is_emulated(id))
        .collect();
    let mute = match setting_bool_or(info.settings, "test_devmodel_mute", false) {
        Ok(mute) => mute,
        Err(why) => {
            println!("REPORT fail: {why}");
            return;
        }
    };
    for id in emulated {
        let identity = fabric.vifs.assign(id, [0; 6]);
        let attached = emunic::EmuPort::open(id, identity.mac, mute)
            .and_then(|port| fabric.add_emulated(port, &identity));
        match attached {
            Ok(()) if mute => println!(
                "front-end {id}: emulated NIC attached MUTE (test hook test_devmodel_mute): \
                 its accesses get no answer while this domain runs, {identity}"
            ),
            Ok(()) => println!("front-end {id}: emulated NIC served, {identity}"),
            Err(why) => println!("front-end {id}: emulated NIC not served: {why}"),
        }
    }
    // A restarted incarnation's phases (the harness adds the guests' and lines them up with the
    // crash, `tests/src/restart.rs`; it reads the first four times in order). Printed after
    // the first round of serving, which maps the offers waiting since before the NIC came up:
    // a console line can take milliseconds when every VM prints at once.
    let opens: Vec<String> = connections
        .iter()
        .map(|c| format!("{} {:?}", c.frontend, c.open_us))
        .collect();
    let mut timeline = (info.boot_count > 1).then(|| {
        format!(
            "restart timeline: entered at {entered_us} us, NIC up at {nic_up_us} us, gateway \
             answered at {gateway_us} us, serving at {} us; event channels up at {events_us} \
             us, front-ends offered InitWait at {offered_us} us",
            now_us()
        ) + &format!(
            "\nrestart opens (us to read the page, get our port, publish): {}",
            opens.join(", ")
        )
    });
    // Control events sent before our event page existed were dropped, so look at every control
    // page at the start and whenever a wait times out.
    let mut recheck = true;
    let mut next_control_check = timer::now() + timer::ms_to_ticks(CONTROL_RECHECK_MS);
    let mut unannounced: Vec<Unannounced> = Vec::new();
    loop {
        // One clock reading per round: under TCG each is a helper call that ends a translated
        // block, and the round's checks read it five times (10 % of this domain's samples in
        // the guest -> host profile, issue 11).
        let now = timer::now();
        if let Some((plan, at)) = crash {
            if now >= at {
                crash_now(plan);
            }
        }
        let mut busy = false;
        let now_ms = timer::ticks_to_ms(now);
        if let Some(control) = balloon_control.as_mut() {
            while let Some(command) = control.due(now_ms) {
                let status = vm_runtime::balloon::set_target(u64::from(command.vm), command.pages);
                println!(
                    "balloon_control: VM {} target {} MiB: {status:?}",
                    command.vm,
                    (command.pages * 4096) >> 20
                );
            }
        }
        // A control event only says "some control page changed": which port it came on is
        // not trusted to name the connection. A front-end that forged its page's header
        // before we first read it could have us listen on another guest's control port, and
        // then its events must not go unseen: any control event steps every connection
        // (each step reads that connection's own page, which is cheap and bounded).
        let mut control_news = recheck;
        // A connection that waits on an event we never got is looked at again (with the NIC
        // the loop's waits rarely time out, so the re-check above does not cover it): a first
        // boot's driver domain once left every front-end in `Initialising` until it crashed,
        // and once served on after a connected front-end had stopped, seeing no event.
        let mut periodic = false;
        if now >= next_control_check {
            next_control_check = now + timer::ms_to_ticks(CONTROL_RECHECK_MS);
            periodic = connections.iter().any(|c| !c.finished());
            control_news |= periodic;
        }
        let mut evented = false;
        for conn in &connections {
            if evtchn::take(conn.control_port()) {
                evented = true;
                // Its event came after all (late, not lost): nothing to say.
                unannounced.retain(|u| u.frontend != conn.frontend);
            }
        }
        control_news |= evented;
        // Only the periodic look, with no event this round: a change it finds is a change
        // whose event has not come. Said if none comes within UNANNOUNCED_GRACE_MS, so that
        // lost events show (a front-end writes its section before it sends the event).
        let quiet_look = periodic && !evented && !recheck;
        for conn in &mut connections {
            let retry_due = conn.look_again_at().is_some_and(|at| now_ms >= at);
            if control_news || retry_due {
                let before = conn.state();
                conn.step(&mut fabric);
                if quiet_look && !retry_due && conn.state() != before {
                    unannounced.push(Unannounced {
                        frontend: conn.frontend,
                        before,
                        after: conn.state(),
                        at_ms: now_ms,
                    });
                }
            }
            // A network port's events only say "look at the rings", which every round does;
            // the ping-pong service consumes its own in `serve`.
            if let (Some(port), Some(_)) = (conn.data_port(), conn.net()) {
                evtchn::take(port);
            }
            // A bounded number per round: a front-end can send requests as fast as we answer.
            for _ in 0..backend::PINGPONG_PER_ROUND {
                if !conn.serve() {
                    break;
                }
                busy = true;
            }
        }
        let (moved, violations) = fabric.pump(&mut connections, now);
        busy |= moved;
        for violation in violations {
            if let Some(conn) = connections
                .iter_mut()
                .find(|c| c.frontend == violation.guest)
            {
                conn.disconnect(&violation.reason, &mut fabric);
            }
        }
        if let Some(line) = timeline.take() {
            println!("{line}");
        }
        unannounced.retain(|u| {
            if now_ms < u.at_ms + UNANNOUNCED_GRACE_MS {
                return true;
            }
            println!(
                "control page of front-end {} changed with no event ({:?} -> {:?}); the \
                 {CONTROL_RECHECK_MS} ms look found it, and no event followed within \
                 {UNANNOUNCED_GRACE_MS} ms",
                u.frontend, u.before, u.after
            );
            false
        });
        if has_nic && now >= next_counters {
            print_counters(info.name, &fabric);
            next_counters = now + timer::ms_to_ticks(COUNTERS_EVERY_MS);
        }
        recheck = false;
        let nic_done = !has_nic || now >= serve_until;
        if nic_done && connections.iter().all(Connection::finished) && fabric.emulated_finished() {
            break;
        }
        if !busy && !fabric.arm(&connections) {
            // Sleep until any of our ports or the NIC has news (or a periodic re-check).
            let ports: Vec<u32> = connections
                .iter()
                .flat_map(|c| [Some(c.control_port()), c.data_port()])
                .flatten()
                .chain(fabric.emulated.iter().map(emunic::EmuPort::request_port))
                .collect();
            let mut wait_us = 50_000;
            if let Some(delay) = fabric.poll_delay_us() {
                wait_us = wait_us.min(delay.max(100));
            }
            // A connection attempt the rate limit held back, or a second look at a section.
            let now = timer::now();
            let now_ms = timer::ticks_to_ms(now);
            if let Some(at) = connections
                .iter()
                .filter_map(Connection::look_again_at)
                .min()
            {
                wait_us = wait_us.min(at.saturating_sub(now_ms).max(1) * 1_000);
            }
            let mut deadline = now + timer::us_to_ticks(wait_us);
            if let Some(at) = fabric.owed_event_at(&connections) {
                deadline = deadline.min(at.max(now + 1));
            }
            if let Some(at) = fabric.hold_ends_at(&connections) {
                deadline = deadline.min(at.max(now + 1));
            }
            recheck = !timer::wait_until(deadline, || {
                nic::NEWS.load(Ordering::Acquire) || ports.iter().any(|&p| evtchn::pending(p))
            }) && !has_nic;
        }
    }
    if has_nic {
        // Setting `nic_accounting`: the hypervisor's counters (its `device_irqs=`: the NIC's
        // interrupts that went through EL2) next to our own count of NIC interrupts.
        if setting_bool_or(info.settings, "nic_accounting", false).unwrap_or(false) {
            let _ = vm_runtime::hypercall::accounting_report(NIC_ACCOUNTING_TAG);
        }
        print_counters(info.name, &fabric);
    }
    fabric.print_counters();
    let served: u64 = connections.iter().map(|c| c.counters.requests).sum();
    let bad: u64 = connections.iter().map(|c| c.counters.bad_words).sum();
    println!(
        "REPORT ok: {} served {} front-end(s), {served} ping-pong requests, {bad} bad words",
        info.name,
        connections.len() + fabric.emulated.len()
    );
}

/// The ACCOUNTING_REPORT tag of the report `nic_accounting` asks for at the end.
const NIC_ACCOUNTING_TAG: u64 = 0x15;

/// One line of NIC and local-endpoint counters.
fn print_counters(name: &str, fabric: &Fabric) {
    let c = fabric.nic;
    let services = fabric
        .local
        .as_ref()
        .map(|l| l.counters)
        .unwrap_or_default();
    let (stale_acks, ahead_acks) = fabric.local.as_ref().map_or((0, 0), |l| {
        (l.stale_acks_repaired(), l.ahead_acks_pulled_back())
    });
    println!(
        "{name} NIC counters: rx {} frames / {} B, tx {} frames / {} B, tx errors {}, \
         interrupts {}, udp echoed {}, tcp echoed {} B; checksums filled {} verified {} \
         dropped {}; stale ACKs repaired {stale_acks}, ahead ACKs pulled back {ahead_acks}",
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.tx_errors,
        nic::INTERRUPTS.load(Ordering::Relaxed),
        services.udp_echoed,
        services.tcp_echoed_bytes,
        fabric.csum.filled,
        fabric.csum.verified,
        fabric.csum.dropped
    );
    // A line of its own: the counters line is near the console's 200 bytes.
    println!(
        "{name} NIC doorbells: transmit {} rung for {} frames ({} asked by the driver)",
        nic::TX_DOORBELLS_RUNG.load(Ordering::Relaxed),
        c.tx_frames,
        nic::TX_DOORBELLS_ASKED.load(Ordering::Relaxed)
    );
    println!(
        "{name} NIC receive doorbells: {} rung for {} frames received ({} asked by the \
         driver)",
        nic::RX_DOORBELLS_RUNG.load(Ordering::Relaxed),
        c.rx_frames,
        nic::RX_DOORBELLS_ASKED.load(Ordering::Relaxed)
    );
}

/// Pings the gateway once through the local endpoint and says how it went.
fn ping_gateway(fabric: &mut Fabric, gateway: Ipv4Address) {
    let start = timer::now();
    let deadline = start + timer::ms_to_ticks(2_000);
    let sent = fabric
        .local
        .as_mut()
        .is_some_and(|l| l.send_ping(gateway, 1).is_ok());
    while sent && timer::now() < deadline {
        fabric.pump::<Connection>(&mut [], timer::now());
        if let Some(reply) = fabric
            .local
            .as_mut()
            .and_then(|l| l.ping_replies().into_iter().next())
        {
            println!("NIC ping gateway {gateway}: reply in {} us", reply.rtt_us);
            return;
        }
        timer::wait_until((timer::now() + timer::ms_to_ticks(2)).min(deadline), || {
            nic::NEWS.load(Ordering::Acquire)
        });
    }
    println!("NIC ping gateway {gateway}: no reply within 2 s");
}

/// The NIC, up, and how the local endpoint uses it.
struct NicUp {
    mac: [u8; 6],
    address: IpCidr,
    gateway: Ipv4Address,
    rogue: Option<RogueDma>,
}

/// Brings the passed-through NIC up; None (with the reason printed) if it cannot be used.
fn start_nic(info: &StartInfo<'static>, routing_id: u16) -> Option<NicUp> {
    let address: IpCidr = setting(info.settings, "ip")
        .unwrap_or("10.0.2.15/24")
        .parse()
        .map_err(|_| println!("NIC FAIL: setting ip is not an IPv4 CIDR like 10.0.2.15/24"))
        .ok()?;
    let gateway: Ipv4Address = setting(info.settings, "gateway")
        .unwrap_or("10.0.2.2")
        .parse()
        .map_err(|_| println!("NIC FAIL: setting gateway is not an IPv4 address"))
        .ok()?;
    let rogue = match setting(info.settings, "attack") {
        Some("dma") => Some(RogueDma::prepare(info)?),
        Some(other) => {
            println!("NIC FAIL: unknown attack {other:?} (known: dma)");
            return None;
        }
        None => None,
    };
    let msix_probe = setting_bool_or(info.settings, "msix_probe", false).unwrap_or(false);
    let nic = match nic::probe(routing_id, msix_probe) {
        Ok(nic) => nic,
        Err(why) => {
            println!("NIC FAIL: {why}");
            return None;
        }
    };
    println!(
        "NIC {} link up: virtio-net, MAC {}, IP {address}, gateway {gateway}, echo on udp/tcp \
         port {ECHO_PORT}",
        nic.function,
        driver_domain::switch::MacAddr(nic.mac),
    );
    println!("NIC interrupts: {}", nic.interrupts);
    Some(NicUp {
        mac: nic.mac,
        address,
        gateway,
        rogue,
    })
}

/// The DMA attack (setting `attack = "dma"`, `victim = <vm id>`): the victim (app `granter`)
/// grants us its page B read-only (ref 2). We map it, which is legitimate, then hand its address
/// to the NIC as a receive buffer, which is not: the device would overwrite memory we may only
/// read. The SMMU walks our stage 2, where the page is read-only, so the write must fault and
/// the page must stay as the victim wrote it.
struct RogueDma {
    victim: u16,
    page_a: grant::Mapping,
    page_b: grant::Mapping,
}

impl RogueDma {
    fn prepare(info: &StartInfo<'static>) -> Option<RogueDma> {
        let victim = setting_u64_or(info.settings, "victim", 0).unwrap_or(0) as u16;
        if victim == 0 {
            println!("NIC FAIL: attack=dma needs victim=<vm id of a granter guest>");
            return None;
        }
        let start = timer::now();
        let (page_a, page_b) = loop {
            match (grant::map(victim, 1, false), grant::map(victim, 2, true)) {
                (Ok(a), Ok(b)) => break (a, b),
                (a, b) => {
                    for m in [a, b].into_iter().flatten() {
                        let _ = m.unmap();
                    }
                    if timer::now() - start > timer::ms_to_ticks(10_000) {
                        println!("NIC FAIL: vm {victim} never granted refs 1 and 2");
                        return None;
                    }
                    timer::sleep_ms(5);
                }
            }
        };
        // Past the marker word, so a successful write would be visible as non-zero bytes.
        let iova = page_b.gpa() + 64;
        dma::arm_rogue_rx(iova);
        println!(
            "attack: NIC receive buffer 0 aimed at IOVA {iova:#x}, vm {victim}'s read-only page"
        );
        Some(RogueDma {
            victim,
            page_a,
            page_b,
        })
    }

    /// After traffic arrived: checks the page through our read-only mapping and lets the victim
    /// finish.
    fn finish(self) {
        let words = self.page_b.words();
        let intact = words[0].load(Ordering::Acquire) == MARKER
            && words[1..].iter().all(|w| w.load(Ordering::Acquire) == 0);
        println!(
            "attack: vm {}'s read-only page is {}",
            self.victim,
            if intact { "intact" } else { "CHANGED" }
        );
        self.page_a.words()[1].store(PEER_WROTE, Ordering::Release);
        let _ = self.page_b.unmap();
        let _ = self.page_a.unmap();
    }
}
