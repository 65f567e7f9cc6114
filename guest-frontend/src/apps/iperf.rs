//! `iperf`: throughput tests with the real iperf3 protocol. Connects the para-virtual front-end
//! like `net` does, runs `vm_net` on it and either serves iperf3 tests (any iperf3 client: the
//! stock `iperf3 -c`, another guest) or runs one against an iperf3 server (`iperf3 -s`, another
//! guest). Prints what the test starts with, a progress line per second, one result line per
//! test (formats in `vm_net::iperf3`'s report module), the front-end's counters, and REPORT.
//!
//! Settings: `ip` (CIDR, required), `gateway` (default 10.0.2.2), `mac` (optional), `mtu`
//! (default 9000, up to 65535), `iperf` (`server` or `client`, default `server`), `iperf_port` (default 5201), `iperf_window` (the
//! data socket's buffer in the direction of the data, which bounds the TCP window when
//! receiving; default 1 MiB).
//! `iperf_accounting` (`true`: ask the hypervisor for its accounting around each test, default
//! `false`), `iperf_timeout_ms` (how long the peer may keep a test waiting outside its data
//! phase, default 10000; the emulated NIC's round trips need more).
//! Server: `iperf_tests` (tests to serve before exiting, default 1), `iperf_idle_ms` (give up
//! when no client shows up for this long, default 60000).
//! Client: `iperf_server` (IPv4, required), `iperf_seconds` (default 5), `iperf_reverse`
//! (`true`: the server sends, default `false`), `iperf_len` (block size, default 131072),
//! `iperf_omit` (seconds not counted at the start, default 0), `iperf_wait_ms` (how long to
//! keep trying while the server boots, default 15000), `iperf_repeat` (tests run one after
//! another, each a fresh connection, default 1: the bench's several short tests in one boot),
//! `iperf_udp` (`true`: a UDP test, like
//! `iperf3 -u`, default `false`; its block size defaults to 1460), `iperf_bitrate` (the UDP
//! target rate in bits/s, like `-b`: default 1000000, at most 1000000000, 0 for unlimited).
//! A UDP result line ends with the receiver's jitter and losses.
//!
//! For the bench's reasons, at the start and the end of test n this side prints
//! `netstats <tag> k=v ...` (its front-end's counters from connect, see [`netstats_lines`]),
//! tag 2n at the start and 2n+1 at the end; with `iperf_accounting = true` it also asks the
//! hypervisor for its scheduling accounting under the same tag (ACCOUNTING_REPORT).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vm_net::iperf3::{self, Client, ClientConfig, Event, ServerConfig, TestMarks};
use vm_net::smoltcp::time::{Duration, Instant};
use vm_net::smoltcp::wire::{IpCidr, Ipv4Address};
use vm_net::{Buffers, Stack};
use vm_runtime::{evtchn, hypercall, println, setting, timer, StartInfo};

use crate::netfront::{ConnectOptions, FrontStats, NetFront, LAST_FRAMES_MS};

/// The longest sleep between polls (the loop also wakes on every event from the back-end).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// The highest UDP target rate `iperf_bitrate` takes: 1 Gbit/s.
const MAX_BITRATE: u64 = 1_000_000_000;
/// How long the server keeps polling after its last test, so the client's close completes.
const SERVER_LINGER: Duration = Duration::from_secs(3);
/// The most tests `iperf_repeat` runs.
const MAX_REPEAT: u64 = 100;
/// The pause between repeated tests: the server retires the last test's sockets before it
/// takes the next one (until then it would deny it as busy).
const REPEAT_PAUSE: Duration = Duration::from_millis(500);

pub fn run(info: &StartInfo<'static>) {
    match iperf(info) {
        Ok(summary) => println!("REPORT ok: {summary}"),
        Err(why) => println!("REPORT fail: {why}"),
    }
}

enum Mode {
    Server {
        tests: u64,
        idle: Duration,
        buffer: usize,
        timeout: Duration,
    },
    Client {
        config: ClientConfig,
        repeat: u64,
    },
}

impl Mode {
    /// The data socket's buffer in the direction of the data (the window).
    fn buffer(&self) -> usize {
        match self {
            Mode::Server { buffer, .. } => *buffer,
            Mode::Client { config, .. } => config.buffer,
        }
    }
}

struct Plan {
    address: IpCidr,
    gateway: Ipv4Address,
    port: u16,
    mode: Mode,
    accounting: bool,
}

fn plan(info: &StartInfo<'static>) -> Result<Plan, String> {
    let number = |key, default| {
        vm_runtime::setting_u64_or(info.settings, key, default).map_err(|e| format!("{e}"))
    };
    let (address, gateway) = super::address(info)?;
    let port = u16::try_from(number("iperf_port", u64::from(iperf3::DEFAULT_PORT))?)
        .map_err(|_| "setting iperf_port is not a port")?;
    let buffer = number("iperf_window", vm_net::iperf3::DEFAULT_BUFFER as u64)?;
    if !(4096..=4 * 1024 * 1024).contains(&buffer) {
        return Err(format!(
            "setting iperf_window={buffer} is out of range (4 KiB..4 MiB)"
        ));
    }
    let buffer = buffer as usize;
    let flag = |key: &'static str| {
        vm_runtime::setting_bool_or(info.settings, key, false).map_err(|e| format!("{e}"))
    };
    let accounting = flag("iperf_accounting")?;
    let timeout = number("iperf_timeout_ms", 10_000)?;
    if !(1_000..=600_000).contains(&timeout) {
        return Err(format!(
            "setting iperf_timeout_ms={timeout} is out of range (1000..600000)"
        ));
    }
    let timeout = Duration::from_millis(timeout);
    let mode = match setting(info.settings, "iperf").unwrap_or("server") {
        "server" => Mode::Server {
            tests: number("iperf_tests", 1)?.max(1),
            idle: Duration::from_millis(number("iperf_idle_ms", 60_000)?),
            buffer,
            timeout,
        },
        "client" => {
            let server: Ipv4Address = setting(info.settings, "iperf_server")
                .ok_or("setting iperf_server is required for iperf = \"client\"")?
                .parse()
                .map_err(|_| "setting iperf_server is not an IPv4 address")?;
            let reverse = flag("iperf_reverse")?;
            let udp = flag("iperf_udp")?;
            let bitrate = number("iperf_bitrate", iperf3::DEFAULT_UDP_RATE)?;
            if bitrate > MAX_BITRATE {
                return Err(format!(
                    "setting iperf_bitrate={bitrate} is out of range (0..{MAX_BITRATE})"
                ));
            }
            let seconds = number("iperf_seconds", 5)?;
            if seconds == 0 || seconds > u64::from(iperf3::MAX_SECONDS) {
                return Err(format!("setting iperf_seconds={seconds} is out of range"));
            }
            let (default_len, lens) = if udp {
                (
                    iperf3::DEFAULT_UDP_BLOCK_LEN,
                    iperf3::MIN_UDP_BLOCK_LEN..=iperf3::MAX_UDP_BLOCK_LEN,
                )
            } else {
                (iperf3::DEFAULT_BLOCK_LEN, 1..=iperf3::MAX_BLOCK_LEN)
            };
            let len = number("iperf_len", u64::from(default_len))?;
            if !u32::try_from(len).is_ok_and(|len| lens.contains(&len)) {
                return Err(format!("setting iperf_len={len} is out of range"));
            }
            let omit = number("iperf_omit", 0)?;
            if omit > u64::from(iperf3::MAX_OMIT) {
                return Err(format!("setting iperf_omit={omit} is out of range"));
            }
            let mut config = ClientConfig::new(server);
            if udp {
                config = config.udp(bitrate);
            }
            config.port = port;
            config.seconds = seconds as u32;
            config.reverse = reverse;
            config.block_len = len as u32;
            config.omit = omit as u32;
            config.connect_wait = Duration::from_millis(number("iperf_wait_ms", 15_000)?);
            config.seed = timer::now();
            config.buffer = buffer;
            config.idle_timeout = timeout;
            let repeat = number("iperf_repeat", 1)?;
            if !(1..=MAX_REPEAT).contains(&repeat) {
                return Err(format!(
                    "setting iperf_repeat={repeat} is out of range (1..{MAX_REPEAT})"
                ));
            }
            Mode::Client { config, repeat }
        }
        other => {
            return Err(format!(
                "setting iperf={other} is neither server nor client"
            ))
        }
    };
    Ok(Plan {
        address,
        gateway,
        port,
        mode,
        accounting,
    })
}

/// Heap a test needs besides its data socket's buffer: the control connection, the other
/// direction, iperf3's messages and smoltcp's state, with room to spare.
const TEST_HEAP_SLACK: usize = 256 * 1024;

/// Whether a data stream with a `buffer`-byte window fits in what is left of the heap now that
/// the network is up (pool, stack): a window this guest's RAM cannot hold is a setting to
/// refuse with a reason, not an allocation failure in the middle of a test. Tried for real
/// (and given back at once): the heap hands out power-of-two blocks, so a 3 MiB buffer needs a
/// free 4 MiB block, which the free byte count does not show.
fn window_fits(buffer: usize) -> Result<(), String> {
    let mut window: Vec<u8> = Vec::new();
    let mut slack: Vec<u8> = Vec::new();
    if window.try_reserve_exact(buffer).is_err()
        || slack.try_reserve_exact(TEST_HEAP_SLACK).is_err()
    {
        let (used, total) = vm_runtime::heap::stats();
        return Err(format!(
            "setting iperf_window={buffer} does not fit in this guest's memory ({} KiB of heap \
             left with the network up, in power-of-two blocks); give the guest more memory_mib \
             or a smaller window",
            total.saturating_sub(used) / 1024
        ));
    }
    Ok(())
}

fn iperf(info: &StartInfo<'static>) -> Result<String, String> {
    let plan = plan(info)?;
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    crate::netfront::init_grant_table()?;
    let options = ConnectOptions::from_settings(info.settings)?;
    let front = NetFront::connect(info, &options)?;
    let mac = front.mac;
    println!(
        "iperf up: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, IP {}, gateway {}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], plan.address, plan.gateway
    );
    let mut stack = Stack::new(front, mac, plan.address, plan.gateway, Buffers::default());
    window_fits(plan.mode.buffer())?;
    let mut rounds = Rounds::default();
    let mut marks = Marks {
        accounting: plan.accounting,
        ..Marks::default()
    };
    let rounds = &mut rounds;
    let result = match plan.mode {
        Mode::Server {
            tests,
            idle,
            buffer,
            timeout,
        } => serve(
            &mut stack,
            rounds,
            &mut marks,
            ServerConfig {
                port: plan.port,
                buffer,
                idle_timeout: timeout,
            },
            tests,
            idle,
        ),
        Mode::Client { config, repeat } => {
            repeat_client(&mut stack, rounds, &mut marks, config, repeat)
        }
    };
    // What was sent last (a client's ACK of the close) leaves before this VM powers off.
    if !stack.device.wait_sent(timer::ms_to_ticks(LAST_FRAMES_MS)) {
        println!("iperf: the back-end did not take our last frames within {LAST_FRAMES_MS} ms");
    }
    print_counters(&stack, rounds);
    if stack.device.broken.is_some() || stack.device.backend_left() {
        return Err("the connection to the back-end was lost".into());
    }
    result
}

/// Prints an event, and for a result what the peer counted.
fn print_event(event: &Event) {
    println!("{event}");
    if let Event::Finished(report) = event {
        if let Some(bytes) = report.peer_bytes() {
            println!(
                "iperf: the {} counted {bytes} bytes",
                if report.sender { "receiver" } else { "sender" }
            );
        }
    }
}

/// The marks around each test: their tags, whether to ask the hypervisor for its accounting.
#[derive(Default)]
struct Marks {
    tags: TestMarks,
    accounting: bool,
}

/// Bytes the app copies into its sockets: none. vm-net's iperf3 sender fills its send buffer
/// with the pattern once and then only commits bytes (`vm_net::iperf3::stream`), so the
/// bench's `app_to_stack` site reads 0 (it used to count the bytes sent, which are never
/// copied, and so made the copies per byte one more than there were).
const APP_COPIED: u64 = 0;

impl Marks {
    /// At an event: a start or an end mark for `Started` and `Finished`/`Failed`.
    fn on(&mut self, event: &Event, stats: &FrontStats) {
        let Some(tag) = self.tags.tag(event) else {
            return;
        };
        if self.accounting {
            // A hypervisor without it answers NOT_SUPPORTED: the figures are then missing.
            let _ = hypercall::accounting_report(tag);
        }
        for line in netstats_lines(tag, stats, APP_COPIED) {
            println!("{line}");
        }
    }
}

/// `netstats <tag> ...` lines: the front-end's counters from connect (frames and frame bytes
/// each way, events sent, suppressed and delivered to us, and the bytes copied at each copy
/// site, the app's copy into its sockets first). Three lines, as the hypervisor cuts console
/// lines at 200 bytes; the harness merges the lines of one tag (`bench::NetStats`).
fn netstats_lines(tag: u64, s: &FrontStats, app_copied: u64) -> [String; 3] {
    [
        format!(
            "netstats {tag} tx_frames={} tx_bytes={} rx_frames={} rx_bytes={} events_sent={} \
             events_suppressed={} events_received={}",
            s.tx_frames,
            s.tx_bytes,
            s.rx_frames,
            s.rx_bytes,
            s.events_sent,
            s.events_suppressed,
            evtchn::delivered(),
        ),
        format!(
            "netstats {tag} copied_app_to_stack={app_copied} copied_stack_to_frame={} \
             copied_frame_to_pool={}",
            s.copied_stack_to_frame, s.copied_frame_to_pool,
        ),
        format!(
            "netstats {tag} copied_pool_to_frame={} copied_frame_to_stack={}",
            s.copied_pool_to_frame, s.copied_frame_to_stack
        ),
    ]
}

/// Where the app's time went, for the counters line.
#[derive(Default)]
struct Rounds {
    rounds: u64,
    sleeps: u64,
    /// Ticks spent polling: in the stack (smoltcp, the front-end's receive and transmit, the
    /// services), in the iperf3 client, in publishing the rings.
    stack: u64,
    client: u64,
    flush: u64,
    /// Ticks spent waiting for an event or a timer.
    asleep: u64,
}

/// One round: frames in, the stack's services (the iperf3 server among them) and `extra`
/// (a client), frames out; then sleeps unless frames moved. `extra_deadline`: when `extra`
/// next needs a round.
fn round(
    stack: &mut Stack<NetFront>,
    rounds: &mut Rounds,
    mut extra: impl FnMut(&mut Stack<NetFront>, Instant),
    extra_deadline: Option<Instant>,
) {
    let start = timer::now();
    rounds.rounds += 1;
    let before = (stack.device.stats.tx_frames, stack.device.stats.rx_frames);
    let now = vm_net::now();
    stack.poll_at(now);
    let t1 = timer::now();
    extra(stack, now);
    let t2 = timer::now();
    stack.poll_at(now);
    let t3 = timer::now();
    stack.device.flush();
    let after = (stack.device.stats.tx_frames, stack.device.stats.rx_frames);
    let polled = timer::now();
    rounds.stack += (t1 - start) + (t3 - t2);
    rounds.client += t2 - t1;
    rounds.flush += polled - t3;
    if after != before || stack.device.broken.is_some() {
        return; // frames are flowing: go on at once
    }
    if stack.device.arm() {
        return; // news arrived while we were busy
    }
    // Nothing moved: wait for the back-end, smoltcp's or the test's next timer.
    let mut wait = MAX_SLEEP;
    if let Some(delay) = stack.poll_delay_at(now) {
        // Zero with nothing moving means smoltcp waits for a free buffer: the back-end's event.
        if delay > Duration::ZERO {
            wait = wait.min(delay);
        }
    }
    if let Some(at) = extra_deadline {
        wait = wait.min(if at > now { at - now } else { Duration::ZERO });
    }
    rounds.sleeps += 1;
    stack
        .device
        .wait(timer::us_to_ticks(wait.total_micros()).max(1));
    rounds.asleep += timer::now() - polled;
}

fn serve(
    stack: &mut Stack<NetFront>,
    rounds: &mut Rounds,
    marks: &mut Marks,
    config: ServerConfig,
    tests: u64,
    idle: Duration,
) -> Result<String, String> {
    let listening = stack.serve_iperf3(config);
    // The first round opens the listener.
    round(stack, rounds, |_, _| {}, None);
    println!("{listening}");
    println!("iperf: serving {tests} test(s)");
    let mut last: Option<String> = None;
    let mut failures: Option<String> = None;
    let (mut finished, mut failed) = (0u64, 0u64);
    let mut active_at = vm_net::now();
    while finished + failed < tests {
        round(stack, rounds, |_, _| {}, None);
        let server = stack.iperf3_server().ok_or("the iperf3 server is gone")?;
        let busy = server.busy();
        let mut events = alloc::vec::Vec::new();
        while let Some(event) = server.next_event() {
            events.push(event);
        }
        for event in events {
            print_event(&event);
            marks.on(&event, &stack.device.stats);
            match event {
                Event::Finished(report) => {
                    finished += 1;
                    last = Some(format!("{report}"));
                }
                Event::Failed(failure) => {
                    failed += 1;
                    failures = Some(failure.reason);
                }
                _ => {}
            }
        }
        let now = vm_net::now();
        if busy {
            active_at = now;
        } else if now - active_at > idle {
            return Err(format!(
                "iperf server: no client for {} ms ({finished} of {tests} test(s) done)",
                idle.total_millis()
            ));
        }
        if stack.device.broken.is_some() {
            break;
        }
    }
    // Let the last client's close complete.
    let until = vm_net::now() + SERVER_LINGER;
    while vm_net::now() < until && stack.device.broken.is_none() {
        round(stack, rounds, |_, _| {}, Some(until));
        if stack.iperf3_server().is_some_and(|s| s.is_quiet()) {
            break;
        }
    }
    match (failures, last) {
        (Some(why), _) => Err(format!(
            "iperf server: {failed} of {tests} test(s) failed, the last one: {why}"
        )),
        (None, Some(line)) => Ok(format!("iperf server: {finished} test(s); last: {line}")),
        (None, None) => Err("iperf server: no test finished".into()),
    }
}

/// `repeat` client tests one after another (a pause between them); every test runs even when
/// one fails, and the summary is the last one's, or how many failed.
fn repeat_client(
    stack: &mut Stack<NetFront>,
    rounds: &mut Rounds,
    marks: &mut Marks,
    config: ClientConfig,
    repeat: u64,
) -> Result<String, String> {
    let mut last = Err(String::from("iperf client: no test ran"));
    let mut failed = 0u64;
    for n in 0..repeat {
        if n > 0 {
            let until = vm_net::now() + REPEAT_PAUSE;
            while vm_net::now() < until && stack.device.broken.is_none() {
                round(stack, rounds, |_, _| {}, Some(until));
            }
        }
        let config = ClientConfig {
            seed: timer::now(),
            ..config
        };
        last = client(stack, rounds, marks, config);
        if let Err(why) = &last {
            failed += 1;
            println!("iperf: test {} of {repeat}: {why}", n + 1);
        }
        if stack.device.broken.is_some() {
            break;
        }
    }
    match last {
        Ok(line) if failed == 0 => Ok(line),
        Ok(_) | Err(_) if repeat > 1 => {
            Err(format!("iperf client: {failed} of {repeat} test(s) failed"))
        }
        other => other,
    }
}

fn client(
    stack: &mut Stack<NetFront>,
    rounds: &mut Rounds,
    marks: &mut Marks,
    config: ClientConfig,
) -> Result<String, String> {
    let mut client = Client::new(config, vm_net::now());
    println!(
        "iperf: client testing {}:{} for {} s{}{}",
        config.server,
        config.port,
        config.seconds,
        if config.udp { " over UDP" } else { "" },
        if config.reverse { " (reverse)" } else { "" }
    );
    let mut result: Option<Result<String, String>> = None;
    while !client.is_closed() && stack.device.broken.is_none() {
        let deadline = client.next_deadline();
        round(
            stack,
            rounds,
            |stack, now| client.poll(stack, now),
            deadline,
        );
        while let Some(event) = client.next_event() {
            print_event(&event);
            marks.on(&event, &stack.device.stats);
            match event {
                Event::Finished(report) => result = Some(Ok(format!("{report}"))),
                Event::Failed(failure) => result = Some(Err(failure.reason)),
                _ => {}
            }
        }
    }
    match result {
        Some(Ok(line)) => Ok(format!("iperf client: {line}")),
        Some(Err(why)) => Err(format!("iperf client: {why}")),
        None => Err("iperf client: the test did not finish".into()),
    }
}

fn print_counters(stack: &Stack<NetFront>, rounds: &Rounds) {
    let s = stack.device.stats;
    println!(
        "iperf counters: tx {} frames ({} dropped by the back-end), rx {} frames ({} over \
         several buffers, {} polls found none, {} longer than our MTU dropped), events {} sent \
         / {} suppressed, {} delivered to us",
        s.tx_frames,
        s.tx_dropped_by_backend,
        s.rx_frames,
        s.rx_merged_frames,
        s.rx_empty,
        s.rx_too_long,
        s.events_sent,
        s.events_suppressed,
        evtchn::delivered()
    );
    if s.reconnects > 0 || s.tx_dropped_disconnected > 0 {
        println!(
            "iperf reconnects: {} to a restarted back-end, {} frames refused while it was away, \
             {} sent again, longest data gap {} ms",
            s.reconnects, s.tx_dropped_disconnected, s.tx_resent, s.longest_data_gap_ms
        );
    }
    let us = timer::ticks_to_us;
    println!(
        "iperf time: {} rounds: {} us in the stack, {} us in the client, {} us publishing; {} \
         sleeps, {} us asleep",
        rounds.rounds,
        us(rounds.stack),
        us(rounds.client),
        us(rounds.flush),
        rounds.sleeps,
        us(rounds.asleep)
    );
}
