//! `net`: the network guest. Connects its para-virtual front-end to the driver domain, runs
//! smoltcp with its own address (ARP, ping replies, UDP/TCP echo on port 7), pings the targets
//! the topology names, prints each reply and a summary per target like `ping` does, then keeps
//! serving for a while.
//!
//! Settings: `ip` (CIDR, required), `gateway` (default 10.0.2.2), `mac` (optional,
//! aa:bb:cc:dd:ee:ff), `mtu` (IP MTU, default 9000: jumbo frames between guests, up to 65535; see
//! `netfront`), `ping` (comma-separated IPv4 targets), `ping_count` (default 10),
//! `ping_interval_ms` (default 200), `ping_delay_ms` (how long to keep serving between a
//! target's first reply and the counted pings, default 0, at most 60 000), `ping_late_ms` (how
//! long after the last request late replies still count: default 1000, 10000 behind the
//! emulated NIC; a guest that pings an emulated guest needs the longer wait too, as that guest
//! answers in seconds under load),
//! `udp_echo` (an IPv4 address whose UDP echo service this
//! guest asks, after the pings: `udp_echo_count` requests, default 100, every
//! `udp_echo_interval_ms`, default 50; the `UDP ECHO` line says which came back, see
//! `vm_net::udp_echo`), `serve_ms` (how long to keep serving after the pings,
//! default 5000; a TCP echo connection still open then is served until it closes, for at
//! most another minute), and for hostile tests `corrupt` (see [`Corruption`]) with
//! `claim_mac` and `claim_ip`, the identity the identity modes try to pass for (default: the
//! gateway's, 52:55:0a:00:02:02 and 10.0.2.2), and `big_ping_to`, where `tiny_rx` and
//! `big_pings` send their large pings (default: the gateway; `big_ping_mac`, their
//! destination MAC for `big_pings`, default broadcast). With `restart_once = true` the guest resets
//! itself (PSCI SYSTEM_RESET) at the end of its first boot and does everything again on its
//! second: how the tests show that a back-end or device model serves a restarted guest afresh.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use shared_abi::handshake::{Frontend, State};
use shared_abi::virtq::RingMem;
use shared_abi::virtq::{
    Segment, AVAIL_IDX, AVAIL_RING, DESC_LEN, DESC_TABLE, ETH_HDR_LEN, MAX_ETH_FRAME, MIN_FRAME,
    NET_HDR_LEN, QUEUE_SIZE, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use vm_net::smoltcp::socket::udp;
use vm_net::smoltcp::wire::{IpCidr, Ipv4Address};
use vm_net::udp_echo::{self, Tally};
use vm_net::{Buffers, Stack, ECHO_PORT};
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, println, setting, StartInfo};

use crate::link::Link;
use crate::netfront::{ConnectOptions, NetFront, LAST_FRAMES_MS};

/// How long a target has to answer its first ping (ARP, a peer still booting).
const FIRST_REPLY_TIMEOUT_MS: u64 = 15_000;
/// How long after the last request we wait for late replies.
const LATE_REPLY_MS: u64 = 1_000;
/// The same behind the emulated NIC, whose every four bytes trap to the device model: round
/// trips of seconds are its normal, not a loss.
const LATE_REPLY_EMULATED_MS: u64 = 10_000;
/// Longest `ping_delay_ms` a topology may ask for.
const MAX_PING_DELAY_MS: u64 = 60_000;
/// Longest `ping_late_ms` a topology may ask for.
const MAX_LATE_REPLY_MS: u64 = 60_000;
/// QEMU user networking's gateway MAC: what the identity modes claim by default.
const SLIRP_GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// How long the flooding modes keep at it.
const HOSTILE_MS: u64 = 3_000;
/// How long past its serving time a guest serves on while a TCP echo connection is open.
const ECHO_GRACE_MS: u64 = 60_000;
/// How long the `silent_close` mode stays (silent) after the back-end noticed.
const SILENT_CLOSE_LINGER_MS: u64 = 500;
/// The churning mode reconnects this many times: past any sane back-end's burst of
/// connections (the driver domain allows 4 back to back, then 1 a second), so it is held back
/// however slowly a loaded host lets it connect. Counted, not timed: under load a few
/// reconnects could fill any fixed time, and the limit would never be reached.
const CHURN_CONNECTS: u32 = 8;
/// ... at most for this long.
const CHURN_MAX_MS: u64 = 20_000;

pub fn run(info: &StartInfo<'static>) {
    if let Err(why) = net(info) {
        println!("REPORT fail: {why}");
    }
}

/// Everything the settings ask for, checked before connecting.
struct Plan {
    address: IpCidr,
    gateway: Ipv4Address,
    targets: Vec<Ipv4Address>,
    count: u64,
    interval_ms: u64,
    /// How long to wait (serving) between a target's first reply and the counted pings.
    delay_ms: u64,
    /// How long after the last request late replies still count.
    late_ms: u64,
    serve_ms: u64,
    /// The UDP echo to ask: target, requests, interval (ms).
    udp_echo: Option<(Ipv4Address, u32, u64)>,
    corruption: Option<Corruption>,
    /// The identity the identity modes try to pass for.
    claim_mac: [u8; 6],
    claim_ip: Ipv4Address,
    /// Where [`Corruption::TinyRx`] and [`Corruption::BigPings`] send their large pings, and
    /// to which MAC (broadcast unless set: a flood; a guest's MAC makes them unicast).
    big_ping_to: Ipv4Address,
    big_ping_mac: [u8; 6],
    restart_once: bool,
}

fn plan(info: &StartInfo<'static>) -> Result<Plan, String> {
    let number = |key, default| {
        vm_runtime::setting_u64_or(info.settings, key, default).map_err(|e| format!("{e}"))
    };
    // A setting in milliseconds with a ceiling: above it, refused with the reason.
    let at_most = |key: &'static str, default: u64, max: u64| {
        let value = number(key, default)?;
        if value > max {
            return Err(format!("setting {key}={value} is above {max}"));
        }
        Ok(value)
    };
    let (address, gateway) = super::address(info)?;
    let targets = match setting(info.settings, "ping") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("ping target {t:?} is not an IPv4 address"))
            })
            .collect::<Result<_, _>>()?,
    };
    let corruption = match setting(info.settings, "corrupt") {
        None => None,
        Some(name) => Some(Corruption::from_name(name).ok_or(format!(
            "unknown corrupt mode {name:?} (known: {})",
            Corruption::NAMES.join(", ")
        ))?),
    };
    let mac = |key: &str, default: [u8; 6]| match setting(info.settings, key) {
        None => Ok(default),
        Some(text) => vm_net::parse_mac(text)
            .ok_or(format!("setting {key} {text:?} is not aa:bb:cc:dd:ee:ff")),
    };
    let claim_mac = mac("claim_mac", SLIRP_GATEWAY_MAC)?;
    let big_ping_mac = mac("big_ping_mac", [0xff; 6])?;
    let claim_ip = match setting(info.settings, "claim_ip") {
        None => gateway,
        Some(text) => text
            .parse()
            .map_err(|_| format!("setting claim_ip {text:?} is not an IPv4 address"))?,
    };
    let big_ping_to = match setting(info.settings, "big_ping_to") {
        None => gateway,
        Some(text) => text
            .parse()
            .map_err(|_| format!("setting big_ping_to {text:?} is not an IPv4 address"))?,
    };
    Ok(Plan {
        address,
        gateway,
        targets,
        count: number("ping_count", 10)?.max(1),
        interval_ms: number("ping_interval_ms", 200)?,
        delay_ms: at_most("ping_delay_ms", 0, MAX_PING_DELAY_MS)?,
        late_ms: {
            let default = if setting(info.settings, "nic") == Some("emulated") {
                LATE_REPLY_EMULATED_MS
            } else {
                LATE_REPLY_MS
            };
            at_most("ping_late_ms", default, MAX_LATE_REPLY_MS)?
        },
        serve_ms: number("serve_ms", 5_000)?,
        udp_echo: match setting(info.settings, "udp_echo") {
            None => None,
            Some(text) => Some((
                text.parse()
                    .map_err(|_| format!("udp_echo target {text:?} is not an IPv4 address"))?,
                number("udp_echo_count", 100)?.clamp(1, u64::from(udp_echo::MAX_REQUESTS)) as u32,
                number("udp_echo_interval_ms", 50)?.max(1),
            )),
        },
        corruption,
        claim_mac,
        claim_ip,
        big_ping_to,
        big_ping_mac,
        restart_once: vm_runtime::setting_bool_or(info.settings, "restart_once", false)
            .map_err(|e| format!("{e}"))?,
    })
}

fn net(info: &StartInfo<'static>) -> Result<(), String> {
    let plan = plan(info)?;
    // Issue 16: this guest follows its balloon target (one step per round of `Net::poll`),
    // unless it moves memory by the fixed settings instead (a target would undo that move).
    let follow_target = super::balloon::follows_target(info);
    if follow_target {
        vm_runtime::balloon::follow_init();
    }
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    crate::netfront::init_grant_table()?;
    let mut options = ConnectOptions::from_settings(info.settings)?;
    options.bad_pool_ref = plan.corruption == Some(Corruption::BadPoolRef);
    if plan.corruption == Some(Corruption::ClaimMac) {
        println!(
            "corrupt claim_mac: asking for MAC {}",
            mac_text(plan.claim_mac)
        );
        options.mac = plan.claim_mac;
    }
    let front = match NetFront::connect(info, &options) {
        Ok(front) => front,
        Err(why) if options.bad_pool_ref => {
            println!(
                "REPORT ok: corrupt bad_pool_ref: the back-end refused the connection ({why})"
            );
            return Ok(());
        }
        Err(why) => return Err(why),
    };
    let mac = front.mac;
    println!(
        "net up: MAC {}, IP {}, gateway {}",
        mac_text(mac),
        plan.address,
        plan.gateway
    );
    let stack = Stack::new(front, mac, plan.address, plan.gateway, Buffers::default());
    let mut net = Net {
        stack,
        ram_bytes: info.ram_bytes,
        balloon_failed: (!follow_target).then(String::new),
    };

    // A refused MAC still makes a working port: this guest then pings like any other.
    if let Some(corruption) = plan.corruption.filter(|&c| c != Corruption::ClaimMac) {
        return net.misbehave(corruption, &plan);
    }
    // Issue 16's memory move (settings balloon_give_mib / balloon_take_mib), before the pings.
    super::balloon::on_net_up(info, &mut |ms| net.serve_for(ms))?;
    if follow_target {
        // A target that differs at net up (a schedule point at 0 ms) is reached before the
        // pings, like the fixed move: the pings then show that both sides still work.
        super::balloon::reach_target_first(&mut |ms| net.serve_for(ms));
    }
    let mut lost_any = false;
    for &target in &plan.targets {
        lost_any |= !net.ping(target, &plan)?;
    }
    if let Some((target, count, interval_ms)) = plan.udp_echo {
        net.udp_echo(target, count, interval_ms, plan.late_ms)?;
    }
    net.serve_for(plan.serve_ms);
    net.finish_echoes();
    // What was sent last (an answer to a late ping) leaves before this VM powers off.
    if !net
        .stack
        .device
        .wait_sent(timer::ms_to_ticks(LAST_FRAMES_MS))
    {
        println!("net: the back-end did not take our last frames within {LAST_FRAMES_MS} ms");
    }
    net.print_closing();
    if let Some(why) = net.balloon_failed.take().filter(|why| !why.is_empty()) {
        return Err(why);
    }
    if net.stack.device.broken.is_some() || net.stack.device.backend_left() {
        return Err("the connection to the back-end was lost".into());
    }
    let s = net.stack.device.stats;
    println!(
        "REPORT ok: net {} pinged {} target(s){}, {} frames sent, {} received",
        plan.address,
        plan.targets.len(),
        if lost_any { " (with losses)" } else { "" },
        s.tx_frames,
        s.rx_frames
    );
    if plan.restart_once && info.boot_count == 1 {
        println!("boot 1 done: resetting this VM (restart_once)");
        vm_runtime::psci::system_reset();
    }
    Ok(())
}

struct Net {
    stack: Stack<NetFront>,
    ram_bytes: u64,
    /// Why following the balloon target failed (the guest then reports failure); empty when
    /// it does not follow its target.
    balloon_failed: Option<String>,
}

impl Net {
    /// One round: frames both ways, services, ring publish and events, and a step towards
    /// the balloon target.
    fn poll(&mut self) {
        self.stack.poll();
        self.stack.device.flush();
        if self.balloon_failed.is_none() {
            if let Err(why) = super::balloon::follow_poll(self.ram_bytes) {
                self.balloon_failed = Some(why);
            }
        }
    }

    /// Sleeps until the back-end signals, smoltcp has a timer due, or `until` (ticks).
    fn sleep(&mut self, until: u64) {
        if self.stack.device.arm() {
            return;
        }
        let mut deadline = until;
        // A balloon take waiting for credit looks again every 10 ms (no interrupt says the
        // credit grew).
        if vm_runtime::balloon::chasing() {
            deadline = deadline.min(timer::now() + timer::ms_to_ticks(10));
        }
        if let Some(us) = self.stack.poll_delay_us() {
            deadline = deadline.min(timer::now() + timer::us_to_ticks(us));
        }
        let now = timer::now();
        if deadline > now {
            self.stack.device.wait(deadline - now);
        }
    }

    /// Runs the stack until `until` (ticks), returning ping replies as they come.
    fn run_until(&mut self, until: u64, mut on_reply: impl FnMut(vm_net::PingReply) -> bool) {
        loop {
            self.poll();
            for reply in self.stack.ping_replies() {
                if on_reply(reply) {
                    return;
                }
            }
            if timer::now() >= until || self.stack.device.broken.is_some() {
                return;
            }
            self.sleep(until);
        }
    }

    fn serve_for(&mut self, ms: u64) {
        let until = timer::now() + timer::ms_to_ticks(ms);
        self.run_until(until, |_| false);
    }

    /// Serves on while a TCP echo connection is open, for at most [`ECHO_GRACE_MS`]: the
    /// serving time is fixed, a client's echo is not, and powering off in its middle cut a
    /// host's 256 KiB echo through the emulated NIC on a loaded host.
    fn finish_echoes(&mut self) {
        if !self.stack.echo_in_progress() {
            return;
        }
        println!(
            "net: a TCP echo connection is still open; serving on until it closes \
             (at most {ECHO_GRACE_MS} ms)"
        );
        let start = Instant::now();
        while self.stack.echo_in_progress()
            && start.elapsed_ms() < ECHO_GRACE_MS
            && self.stack.device.broken.is_none()
        {
            self.serve_for(100);
        }
        if self.stack.echo_in_progress() {
            println!(
                "net: the TCP echo connection is still open after {ECHO_GRACE_MS} ms; \
                 stopping anyway"
            );
        } else {
            println!(
                "net: the TCP echo connection closed {} ms after the serving time",
                start.elapsed_ms()
            );
        }
    }

    /// Pings `target` `count` times after a first reply shows it is there; prints every reply
    /// and the summary. True if nothing was lost.
    fn ping(&mut self, target: Ipv4Address, plan: &Plan) -> Result<bool, String> {
        // Warm-up (sequence 0, not counted): resolves the target's MAC and waits for it to boot.
        let start = Instant::now();
        let mut answered = false;
        while !answered
            && start.elapsed_ms() < FIRST_REPLY_TIMEOUT_MS
            && self.stack.device.broken.is_none()
        {
            let _ = self.stack.send_ping(target, 0);
            let until = timer::now() + timer::ms_to_ticks(250);
            self.run_until(until, |r| {
                answered |= r.from == target && r.seq == 0;
                answered
            });
        }
        if !answered {
            println!("ping {target}: no answer within {FIRST_REPLY_TIMEOUT_MS} ms");
        } else if plan.delay_ms > 0 {
            // Another guest's pings can go first (the bench's back-to-back pings wait for the
            // spaced ones, which they would warm up).
            self.serve_for(plan.delay_ms);
        }
        // Duplicates never get here: the stack forgets a request once it is answered.
        let mut rtts_us: Vec<u64> = Vec::new();
        let record = |r: vm_net::PingReply, rtts: &mut Vec<u64>| {
            if r.from == target && r.seq != 0 {
                println!(
                    "ping {target}: seq {} rtt {}.{:03} ms",
                    r.seq,
                    r.rtt_us / 1000,
                    r.rtt_us % 1000
                );
                rtts.push(r.rtt_us);
            }
        };
        for seq in 1..=plan.count as u16 {
            if self.stack.device.broken.is_some() {
                break; // the network is down for good: no use pinging on
            }
            if self.stack.send_ping(target, seq).is_err() {
                println!("ping {target}: seq {seq} not sent (ICMP buffer full)");
            }
            let until = timer::now() + timer::ms_to_ticks(plan.interval_ms.max(1));
            let mut got = Vec::new();
            self.run_until(until, |r| {
                got.push(r);
                false
            });
            for r in got {
                record(r, &mut rtts_us);
            }
        }
        let until = timer::now() + timer::ms_to_ticks(plan.late_ms);
        let mut got = Vec::new();
        let expected = plan.count as usize;
        let have = rtts_us.len();
        self.run_until(until, |r| {
            got.push(r);
            have + got.len() >= expected
        });
        for r in got {
            record(r, &mut rtts_us);
        }
        let received = rtts_us.len().min(expected);
        if received == 0 {
            println!("PING {target}: 0/{} replies", plan.count);
            return Ok(false);
        }
        let min = rtts_us.iter().min().copied().unwrap_or(0);
        let max = rtts_us.iter().max().copied().unwrap_or(0);
        let avg = rtts_us.iter().sum::<u64>() / rtts_us.len() as u64;
        let ms = |us: u64| format!("{}.{:03}", us / 1000, us % 1000);
        println!(
            "PING {target}: {received}/{} replies, rtt min/avg/max {}/{}/{} ms",
            plan.count,
            ms(min),
            ms(avg),
            ms(max)
        );
        Ok(received == expected)
    }

    /// Asks `target`'s UDP echo service `count` times, `interval_ms` apart, waits `late_ms`
    /// for the last answers, and prints the tally (`UDP ECHO <target>: ...`). Requests made
    /// while the back-end is away wait in the socket (the device refuses them), as TCP's do.
    fn udp_echo(
        &mut self,
        target: Ipv4Address,
        count: u32,
        interval_ms: u64,
        late_ms: u64,
    ) -> Result<(), String> {
        const SLOTS: usize = 64;
        let buffer = || {
            udp::PacketBuffer::new(
                alloc::vec![udp::PacketMetadata::EMPTY; SLOTS],
                alloc::vec![0u8; SLOTS * udp_echo::DATAGRAM_LEN],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        let port = self.stack.ephemeral_port();
        socket
            .bind(port)
            .map_err(|e| format!("udp echo: cannot bind port {port}: {e:?}"))?;
        let handle = self.stack.sockets_mut().add(socket);
        let us = |ticks: u64| timer::ticks_to_us(ticks);
        let mut tally = Tally::new(count);
        let interval = timer::ms_to_ticks(interval_ms);
        let mut next_send = timer::now();
        let mut done_at: Option<u64> = None;
        let mut buf = [0u8; 2 * udp_echo::DATAGRAM_LEN];
        loop {
            let now = timer::now();
            if now >= next_send {
                if let Some(seq) = tally.next_seq() {
                    let socket = self.stack.sockets_mut().get_mut::<udp::Socket>(handle);
                    if socket
                        .send_slice(&udp_echo::datagram(seq), (target, ECHO_PORT))
                        .is_ok()
                    {
                        tally.sent(seq, us(now));
                    }
                    next_send += interval;
                } else if done_at.is_none() {
                    done_at = Some(now + timer::ms_to_ticks(late_ms));
                }
            }
            self.poll();
            let socket = self.stack.sockets_mut().get_mut::<udp::Socket>(handle);
            while let Ok((n, meta)) = socket.recv_slice(&mut buf) {
                if meta.endpoint.addr == target.into() && meta.endpoint.port == ECHO_PORT {
                    tally.received(&buf[..n], us(timer::now()));
                } else {
                    tally.strays += 1;
                }
            }
            let s = tally.summary();
            let all_back = tally.next_seq().is_none() && s.answered == s.sent;
            if all_back
                || done_at.is_some_and(|at| timer::now() >= at)
                || self.stack.device.broken.is_some()
            {
                break;
            }
            self.sleep(done_at.unwrap_or(next_send).max(timer::now()));
        }
        self.stack.sockets_mut().remove(handle);
        println!("UDP ECHO {target}: {}", tally.summary());
        Ok(())
    }

    fn print_closing(&self) {
        let s = self.stack.device.stats;
        println!(
            "net counters: tx {} frames ({} dropped by the back-end), rx {} frames, events {} \
             sent / {} suppressed, {} delivered to us, {} NIC interrupts",
            s.tx_frames,
            s.tx_dropped_by_backend,
            s.rx_frames,
            s.events_sent,
            s.events_suppressed,
            evtchn::delivered(),
            evtchn::local_irqs()
        );
        if s.rx_too_long > 0 {
            println!(
                "net: {} received frames were longer than our MTU and dropped",
                s.rx_too_long
            );
        }
        if s.reconnects > 0 || s.tx_dropped_disconnected > 0 {
            println!(
                "net reconnects: {} to a restarted back-end, {} frames refused while it was \
                 away, {} sent again, longest data gap {} ms",
                s.reconnects, s.tx_dropped_disconnected, s.tx_resent, s.longest_data_gap_ms
            );
        }
    }

    /// Hostile test build: breaks the ring (or the switch's rules) in the way `corruption`
    /// names, then watches whether the back-end cut us off.
    fn misbehave(&mut self, corruption: Corruption, plan: &Plan) -> Result<(), String> {
        // Let the well-behaved guests get going first.
        self.serve_for(1_000);
        println!("corrupt {}: misbehaving now", corruption.name());
        let mac = self.stack.device.mac;
        if let Some(outcome) = self.misbehave_long(corruption, plan)? {
            println!("REPORT ok: corrupt {} done; {outcome}", corruption.name());
            return Ok(());
        }
        corruption.apply(&mut self.stack.device, mac, plan)?;
        self.stack.device.flush();
        let _ = evtchn::send(self.stack.device.port);
        self.serve_for(plan.serve_ms.min(3_000));
        let cut_off = self.stack.device.backend_left();
        println!(
            "REPORT ok: corrupt {} done; the back-end {}",
            corruption.name(),
            if cut_off {
                "closed the connection"
            } else {
                "kept the connection"
            }
        );
        Ok(())
    }
}

impl Net {
    /// The modes that misbehave over time rather than with one bad ring state; `None` for the
    /// others. Returns what happened, for the report line.
    fn misbehave_long(
        &mut self,
        corruption: Corruption,
        plan: &Plan,
    ) -> Result<Option<String>, String> {
        let front = &mut self.stack.device;
        let until = timer::now() + timer::ms_to_ticks(HOSTILE_MS);
        let own_ip = match plan.address {
            IpCidr::Ipv4(cidr) => cidr.address().octets(),
        };
        let outcome = match corruption {
            Corruption::BroadcastStorm => {
                // ARP requests, each one a flood, as fast as the ring takes them.
                let request = arp_frame(front.mac, front.mac, own_ip, [10, 0, 2, 254]);
                let mut sent = 0u64;
                while timer::now() < until && front.broken.is_none() {
                    while front.send_frame(&request) {
                        sent += 1;
                    }
                    front.flush();
                    timer::sleep_ms(1);
                }
                format!("{sent} broadcast frames sent")
            }
            Corruption::ShortRx | Corruption::TinyRx => {
                // Every receive buffer shrunk below a net + Ethernet header (or to just that),
                // again and again (the queue re-offers each at full size when it comes back
                // empty).
                let before = front.stats.rx_empty;
                let (len, big_ping) = match corruption {
                    Corruption::TinyRx => {
                        let to = plan.big_ping_to.octets();
                        let ping = icmp_echo(front.mac, own_ip, to, TINY_RX_PING_BYTES);
                        (MIN_FRAME, Some(ping))
                    }
                    _ => (10, None),
                };
                while timer::now() < until {
                    let front = &mut self.stack.device;
                    return_if_broken(front)?;
                    let ring = *front.rings_mut()?.raw_rx_ring();
                    for id in 0..QUEUE_SIZE {
                        ring.store_u32(DESC_TABLE + usize::from(id) * DESC_LEN + 8, len);
                    }
                    if let Some(ping) = &big_ping {
                        front.send_frame(ping);
                    }
                    front.flush();
                    let _ = evtchn::send(front.port);
                    self.stack.poll();
                    timer::sleep_ms(1);
                }
                format!(
                    "{} {} receive buffers came back empty",
                    self.stack.device.stats.rx_empty - before,
                    if len < MIN_FRAME { "short" } else { "tiny" }
                )
            }
            Corruption::BigPings => {
                let to = plan.big_ping_to.octets();
                let mut ping = icmp_echo(front.mac, own_ip, to, BIG_PINGS_BYTES);
                ping[..6].copy_from_slice(&plan.big_ping_mac);
                let mut sent = 0u64;
                while timer::now() < until {
                    let front = &mut self.stack.device;
                    return_if_broken(front)?;
                    if front.send_frame(&ping) {
                        sent += 1;
                    }
                    front.flush();
                    self.stack.poll();
                    timer::sleep_ms(5);
                }
                format!("{sent} pings of {} bytes sent", ping.len())
            }
            Corruption::SilentClose => {
                let link = &front.rings_mut()?.link;
                link.control
                    .write_frontend(&Frontend {
                        state: State::Closing,
                        ..Frontend::initialising()
                    })
                    .map_err(|e| format!("writing our section: {e:?}"))?;
                let (noticed_ms, state) = wait_for_backend_to_leave(link);
                let outcome = match state {
                    Some(State::Connected) => {
                        format!("the back-end did not notice within {HOSTILE_MS} ms")
                    }
                    state => format!(
                        "wrote Closing with no event; the back-end noticed in {noticed_ms} ms \
                         (now {state:?})"
                    ),
                };
                // Still silent a while: our stop is an event of its own, and the back-end
                // waits a little for a late event before it calls this one lost.
                timer::sleep_ms(SILENT_CLOSE_LINGER_MS);
                outcome
            }
            Corruption::ScribbleSection => {
                let link = &front.rings_mut()?.link;
                link.control.scribble_frontend(0xa5);
                let _ = evtchn::send(link.control_port);
                match wait_for_backend_to_leave(link) {
                    (_, Some(State::Connected)) => {
                        format!("the back-end stayed connected for {HOSTILE_MS} ms")
                    }
                    (closed_ms, state) => format!(
                        "scribbled over our control section; the back-end closed in \
                         {closed_ms} ms (now {state:?})"
                    ),
                }
            }
            Corruption::NoDrain => {
                // Never look at the receive ring again: no polling at all.
                timer::sleep_ms(HOSTILE_MS);
                String::from("did not drain its receive ring")
            }
            Corruption::Churn => {
                let until = timer::now() + timer::ms_to_ticks(CHURN_MAX_MS);
                let n = front.rings_mut()?.churn(CHURN_CONNECTS, until);
                format!("reconnected {n} times")
            }
            Corruption::ForgeHeader => {
                let link = &front.rings_mut()?.link;
                let mut header = link
                    .control
                    .header()
                    .map_err(|e| format!("control page header: {e:?}"))?;
                let own = header.backend_port;
                // Another of the back-end's ports: most likely another guest's control port.
                header.backend_port = if own > 1 { own - 1 } else { own + 1 };
                header.frontend_port = header.frontend_port.wrapping_add(7) % 200 + 1;
                link.control
                    .forge_header(&header)
                    .map_err(|e| format!("forging the header: {e:?}"))?;
                println!(
                    "corrupt forge_header: told the back-end its control port is {} (was {own})",
                    header.backend_port
                );
                let port = link.control_port;
                evtchn::take(port);
                // Leave: the back-end tears down and tells us on its control port, which must
                // still be the one the hypervisor bound, not the one we wrote. (Not through
                // `Link::close`, whose waiting consumes the events we are listening for.)
                let closing = Frontend {
                    state: State::Closing,
                    ..Frontend::initialising()
                };
                link.control
                    .write_frontend(&closing)
                    .map_err(|e| format!("writing Closing: {e:?}"))?;
                let _ = evtchn::send(port);
                let start = timer::now();
                let mut heard = false;
                while !heard && timer::now() - start < timer::ms_to_ticks(2_000) {
                    heard = evtchn::take(port);
                    timer::sleep_ms(5);
                }
                format!(
                    "the back-end {} our own control port",
                    if heard {
                        "still signals"
                    } else {
                        "no longer signals"
                    }
                )
            }
            _ => return Ok(None),
        };
        Ok(Some(outcome))
    }
}

/// Waits up to [`HOSTILE_MS`] for the back-end's section to leave `Connected`; returns how
/// long that took (ms) and the state it shows then (`None`: not a valid section).
fn wait_for_backend_to_leave(link: &Link) -> (u64, Option<State>) {
    let start = Instant::now();
    let state = || link.backend_section().map(|b| b.state);
    while start.elapsed_ms() < HOSTILE_MS && state() == Some(State::Connected) {
        timer::sleep_ms(1);
    }
    (start.elapsed_ms(), state())
}

fn return_if_broken(front: &NetFront) -> Result<(), String> {
    match &front.broken {
        Some(why) => Err(format!("the back-end broke the ring protocol: {why}")),
        None => Ok(()),
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// An ARP reply for IPv4 over Ethernet from Ethernet source `src`, naming `sha`/`spa` as its
/// sender, broadcast (a gratuitous ARP: every neighbour would take it into its cache).
fn arp_frame(src: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut frame = broadcast_frame(src);
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    frame[22..28].copy_from_slice(&sha);
    frame[28..32].copy_from_slice(&spa);
    frame[38..42].copy_from_slice(&tpa);
    frame
}

/// An ICMP echo request from `from` to `to`, broadcast at the Ethernet level (the switch
/// floods it; the guest at `to` answers the address it claims to come from).
fn icmp_from(src: [u8; 6], from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
    icmp_echo(src, from, to, 0)
}

/// Payload bytes of [`Corruption::TinyRx`]'s pings: a reply then needs 56 receive buffers of
/// the fewest bytes a frame may have, more than a frame may take.
const TINY_RX_PING_BYTES: usize = 1400;

/// Payload bytes of [`Corruption::BigPings`]'s pings: frames longer than an MTU of 16 000
/// and shorter than the default 65 535.
const BIG_PINGS_BYTES: usize = 30_000;

/// An ICMP echo request of `payload` bytes from `from` to `to`, sent to the broadcast MAC
/// (the switch floods it, so it reaches `to` without an ARP exchange first), padded to
/// Ethernet's 60 bytes.
fn icmp_echo(src: [u8; 6], from: [u8; 4], to: [u8; 4], payload: usize) -> Vec<u8> {
    let mut frame = broadcast_frame(src);
    frame.truncate(ETH_HDR_LEN);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload;
    let mut ip = alloc::vec![0u8; total];
    ip[..12].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0, 0, 64, 1, 0, 0]);
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&from);
    ip[16..20].copy_from_slice(&to);
    let sum = !internet_sum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip[20..28].copy_from_slice(&[8, 0, 0, 0, 0x51, 0x55, 0, 1]);
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = !internet_sum(&ip[20..]);
    ip[22..24].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

fn internet_sum(bytes: &[u8]) -> u16 {
    let mut sum = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum::<u32>();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The ways a hostile front-end breaks the rules (setting `corrupt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// avail.idx far more than the ring size ahead.
    AvailAhead,
    /// An avail entry naming descriptor 500 of a 128-entry table.
    DescOutOfRange,
    /// A chain whose last descriptor points back at its head.
    DescLoop,
    /// A chain of more descriptors than the protocol allows.
    ChainTooLong,
    /// A frame of zero bytes.
    ZeroLen,
    /// A frame longer than the back-end accepts.
    OversizedLen,
    /// A chain shorter than a net header plus an Ethernet header.
    RuntFrame,
    /// A buffer that crosses the end of the granted pool.
    OutsidePool,
    /// Pool refs that were never granted.
    BadPoolRef,
    /// A device-writable descriptor on the TX queue.
    WriteOnlyTx,
    /// Frames with someone else's source MAC.
    SpoofMac,
    /// Asks the handshake for `claim_mac` (another guest's, the gateway's) instead of its own,
    /// then pings like a good guest with whatever MAC it got.
    ClaimMac,
    /// Gratuitous ARP claiming `claim_ip` with its own MAC, and its own address with
    /// `claim_mac` as ARP sender hardware address.
    SpoofArp,
    /// ICMP echo requests from `claim_ip` to the gateway.
    SpoofIp,
    /// Broadcast frames as fast as the ring takes them, for a few seconds.
    BroadcastStorm,
    /// Receive buffers too short for any frame, re-offered as fast as they come back.
    ShortRx,
    /// Receive buffers of the fewest bytes a frame may have (a net and an Ethernet header),
    /// re-offered as fast as they come back, while pinging `big_ping_to` (default: the
    /// gateway) with 1400-byte payloads: with mergeable buffers (`mtu` above 9000) each reply
    /// would take more buffers than a frame may.
    TinyRx,
    /// Pings `big_ping_to` with frames of 30 000 bytes for a few seconds: fine for a guest
    /// whose MTU takes them, and for one with a smaller MTU (and mergeable receive buffers,
    /// which the back-end fills whatever that MTU) frames it has to drop.
    BigPings,
    /// Never drains its receive ring.
    NoDrain,
    /// Closes and reconnects as fast as the back-end lets it.
    Churn,
    /// Rewrites the control page header (its ports) after connecting, then leaves.
    ForgeHeader,
    /// Writes `Closing` into its control section without the event that should go with it,
    /// then waits (sending nothing) for the back-end to notice: as if the event were lost.
    SilentClose,
    /// Scribbles over its control section (bytes no reader accepts) while connected, sends the
    /// event, and waits for the back-end to close the connection.
    ScribbleSection,
}

impl Corruption {
    const ALL: [Corruption; 23] = [
        Corruption::AvailAhead,
        Corruption::DescOutOfRange,
        Corruption::DescLoop,
        Corruption::ChainTooLong,
        Corruption::ZeroLen,
        Corruption::OversizedLen,
        Corruption::RuntFrame,
        Corruption::OutsidePool,
        Corruption::BadPoolRef,
        Corruption::WriteOnlyTx,
        Corruption::SpoofMac,
        Corruption::ClaimMac,
        Corruption::SpoofArp,
        Corruption::SpoofIp,
        Corruption::BroadcastStorm,
        Corruption::ShortRx,
        Corruption::TinyRx,
        Corruption::BigPings,
        Corruption::NoDrain,
        Corruption::Churn,
        Corruption::ForgeHeader,
        Corruption::SilentClose,
        Corruption::ScribbleSection,
    ];
    const NAMES: [&'static str; 23] = [
        "avail_ahead",
        "desc_out_of_range",
        "desc_loop",
        "chain_too_long",
        "zero_len",
        "oversized_len",
        "runt_frame",
        "outside_pool",
        "bad_pool_ref",
        "write_only_tx",
        "spoof_mac",
        "claim_mac",
        "spoof_arp",
        "spoof_ip",
        "broadcast_storm",
        "short_rx",
        "tiny_rx",
        "big_pings",
        "no_drain",
        "churn",
        "forge_header",
        "silent_close",
        "scribble_section",
    ];

    fn from_name(name: &str) -> Option<Corruption> {
        Self::NAMES
            .iter()
            .position(|&n| n == name)
            .map(|i| Self::ALL[i])
    }

    fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|&c| c == self).unwrap_or(0)]
    }

    /// Writes the bad ring state. Chains are first added through the queue (so our own
    /// bookkeeping stays sane) and then damaged in the page before publishing.
    fn apply(self, front: &mut NetFront, mac: [u8; 6], plan: &Plan) -> Result<(), String> {
        let front = front.rings_mut()?;
        let buffer = front.take_tx_buffer().ok_or("no free transmit buffer")?;
        let frame = broadcast_frame(mac);
        front.write_pool(buffer, &[0; NET_HDR_LEN]);
        front.write_pool(buffer + NET_HDR_LEN as u32, &frame);
        let whole = Segment {
            offset: buffer,
            len: (NET_HDR_LEN + frame.len()) as u32,
        };
        let desc = |id: u16| DESC_TABLE + usize::from(id) * DESC_LEN;
        match self {
            Corruption::SpoofMac => {
                for _ in 0..5 {
                    let spoofed = broadcast_frame([0x02, 0x66, 0x66, 0x66, 0x66, 0x66]);
                    front.send_frame(&spoofed);
                }
                return Ok(());
            }
            Corruption::SpoofArp => {
                let own_ip = match plan.address {
                    IpCidr::Ipv4(cidr) => cidr.address().octets(),
                };
                let claim = plan.claim_ip.octets();
                for _ in 0..5 {
                    front.send_frame(&arp_frame(mac, mac, claim, claim));
                    front.send_frame(&arp_frame(mac, plan.claim_mac, own_ip, own_ip));
                }
                return Ok(());
            }
            Corruption::SpoofIp => {
                // To the gateway: to the outside, where nothing else would stop it.
                for _ in 0..5 {
                    let (from, to) = (plan.claim_ip.octets(), plan.gateway.octets());
                    front.send_frame(&icmp_from(mac, from, to));
                }
                return Ok(());
            }
            Corruption::BadPoolRef
            | Corruption::ClaimMac
            | Corruption::BroadcastStorm
            | Corruption::ShortRx
            | Corruption::TinyRx
            | Corruption::BigPings
            | Corruption::NoDrain
            | Corruption::Churn
            | Corruption::ForgeHeader
            | Corruption::SilentClose
            | Corruption::ScribbleSection => return Ok(()),
            Corruption::AvailAhead => {
                let ring = front.raw_tx_ring();
                let idx = ring.load_u16(AVAIL_IDX);
                ring.store_u16_release(AVAIL_IDX, idx.wrapping_add(QUEUE_SIZE + 72));
                return Ok(());
            }
            Corruption::DescOutOfRange => {
                let head = front.add_raw_tx(&[whole]).ok_or("add failed")?;
                let ring = front.raw_tx_ring();
                // The entry just added is the last one written: overwrite it.
                for slot in 0..QUEUE_SIZE {
                    let at = AVAIL_RING + 2 * usize::from(slot);
                    if ring.load_u16(at) == head {
                        ring.store_u16(at, 500);
                    }
                }
            }
            Corruption::DescLoop => {
                let halves = [
                    Segment {
                        offset: buffer,
                        len: 32,
                    },
                    Segment {
                        offset: buffer + 32,
                        len: whole.len - 32,
                    },
                ];
                let head = front.add_raw_tx(&halves).ok_or("add failed")?;
                let ring = front.raw_tx_ring();
                let second = ring.load_u16(desc(head) + 14);
                ring.store_u16(desc(second) + 12, VIRTQ_DESC_F_NEXT);
                ring.store_u16(desc(second) + 14, head);
            }
            Corruption::ChainTooLong => {
                // 16 pieces (allowed), then the last one chained to a 17th.
                let pieces: Vec<Segment> = (0..16)
                    .map(|i| Segment {
                        offset: buffer + 4 * i,
                        len: 4,
                    })
                    .collect();
                let head = front.add_raw_tx(&pieces).ok_or("add failed")?;
                let extra = front.add_raw_tx(&[whole]).ok_or("add failed")?;
                let ring = front.raw_tx_ring();
                let mut last = head;
                for _ in 0..15 {
                    last = ring.load_u16(desc(last) + 14);
                }
                ring.store_u16(desc(last) + 12, VIRTQ_DESC_F_NEXT);
                ring.store_u16(desc(last) + 14, extra);
            }
            Corruption::ZeroLen | Corruption::OversizedLen | Corruption::RuntFrame => {
                let head = front.add_raw_tx(&[whole]).ok_or("add failed")?;
                let len: u32 = match self {
                    Corruption::ZeroLen => 0,
                    // Past the back-end's frame limit (the internal link's largest frame and
                    // the header) yet inside the pool, so a bad frame and not a violation.
                    Corruption::OversizedLen => {
                        let len = (NET_HDR_LEN + MAX_ETH_FRAME + 1) as u32;
                        if u64::from(buffer) + u64::from(len) > u64::from(front.pool_len()) {
                            return Err("pool too small for an oversized frame".into());
                        }
                        len
                    }
                    _ => (NET_HDR_LEN + 10) as u32,
                };
                front.raw_tx_ring().store_u32(desc(head) + 8, len);
            }
            Corruption::OutsidePool => {
                let head = front.add_raw_tx(&[whole]).ok_or("add failed")?;
                let past_end = u64::from(front.pool_len() - 16);
                front.raw_tx_ring().store_u64(desc(head), past_end);
            }
            Corruption::WriteOnlyTx => {
                let head = front.add_raw_tx(&[whole]).ok_or("add failed")?;
                front
                    .raw_tx_ring()
                    .store_u16(desc(head) + 12, VIRTQ_DESC_F_WRITE);
            }
        }
        Ok(())
    }
}

/// A broadcast frame from `source` (an ARP-typed frame of zeros: it only has to be switched).
fn broadcast_frame(source: [u8; 6]) -> Vec<u8> {
    let mut frame = alloc::vec![0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&source);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    frame
}
