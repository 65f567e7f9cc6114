//! The demo's driver-domain restart check (issue 14): for a topology whose driver domain has
//! the test hook `test_crash`, one check named `driver-domain restart`:
//! `PASS driver-domain restart: recovered in 287 ms, tcp stream survived (109136359 bytes sent,
//! 395 ms gap)`. "Recovered" is the crash to the first frame a guest received through the new
//! incarnation (the earliest guest: the first frame forwarded again), as the guests print it;
//! the stream is a guest's iperf3 client that finished its test across the restart, and the
//! gap is the longest one a guest saw between data frames across the reconnection.
//!
//! Beside it, `driver-domain restart phases`: where the time went, each phase in ms after the
//! crash ([`PHASES`], [`recovery`]), from the shared counter's times the restarted driver
//! domain and the guests print. "Recovered" counts from the crash when the driver domain's
//! test crash printed its time, else from the first guest noticing. The bench's `restart`
//! group reads the same [`Recovery`]; [`parse_udp_echo`] reads a guest's UDP echo tally.
//!
//! The same line carries the recovery cut into [`SPANS`] that add up to it: the hypervisor's
//! own (its `restart timeline: VM ...` line, [`parse_hv_timeline`]: notice, stop, teardown,
//! zero, load, start), the driver domain's bring-up, and the handshake with the guests.
//!
//! The console strings are the front-end's (`guest-frontend/src/netfront/reconnect.rs`) and
//! the driver domain's (`driver-domain/src/main.rs`), defined here rather than in
//! `console.rs`, which other work edits.

use std::collections::BTreeMap;

use crate::iperf::{parse_result_line, Role};
use crate::qemu::Boot;
use crate::report::Check;
use crate::topology::Topology;
use shared_abi::bundle::VmKind;

/// A guest's first frame through the restarted back-end: `... 287 ms after it went away`.
pub const FIRST_FRAME: &str = "net: first frame through the back-end again ";
/// A guest's data gap across the restart: `net: data frames again after a gap of 395 ms`.
pub const DATA_GAP: &str = "net: data frames again after a gap of ";
/// The hypervisor's restart line contains this.
pub const RESTARTING: &str = "restarting it (crash ";

/// The name of the check.
pub const CHECK: &str = "driver-domain restart";
/// The name of the phases line beside it.
pub const PHASES_CHECK: &str = "driver-domain restart phases";
/// The driver domain's test crash: `test crash: Panic now (at 5012345 us)`.
pub const CRASH: &str = "test crash: ";
/// A restarted driver domain's timeline: `restart timeline: entered at T us, NIC up at T us,
/// gateway answered at T us, serving at T us; event channels up at T us, front-ends offered
/// InitWait at T us` (the phases are the first four times).
pub const TIMELINE: &str = "restart timeline: ";
/// The hypervisor's timeline of a restart (`hypervisor::restart::Timeline`): `restart
/// timeline: VM dd: notice at T us; ms after it: stop 0.1, teardown 7.5, zero 7.6, load 9.9,
/// start 10.3`.
pub const HV_TIMELINE: &str = "restart timeline: VM ";
/// The hypervisor's marks in its timeline line, in order.
pub const HV_MARKS: [&str; 5] = ["stop", "teardown", "zero", "load", "start"];
/// The recovery cut into consecutive spans (ms each; together the crash to the first frame):
/// the crash to the hypervisor's notice (`hv_notice`); from there to every vCPU stopped
/// (`hv_stop`), the sharing and stage-2 teardown (`hv_teardown`), zeroing the RAM (`hv_zero`),
/// writing the image (`hv_load`); from there to the driver domain's first code (`hv_start`:
/// the re-attach of the NIC, the first vCPU made runnable, and its wait for a pCPU); the
/// driver domain's NIC bring-up (`dd_boot_to_nic`) and the rest until it serves its
/// front-ends (`dd_to_serving`); the handshake until a guest receives the first frame through
/// it (`handshake`).
pub const SPANS: [&str; 9] = [
    "hv_notice",
    "hv_stop",
    "hv_teardown",
    "hv_zero",
    "hv_load",
    "hv_start",
    "dd_boot_to_nic",
    "dd_to_serving",
    "handshake",
];

/// A hypervisor timeline line (the text after `[hv] `): the VM, the notice in us and each
/// [`HV_MARKS`] entry present with its ms after the notice.
pub fn parse_hv_timeline(text: &str) -> Option<(String, u64, BTreeMap<&'static str, f64>)> {
    let rest = text.strip_prefix(HV_TIMELINE)?;
    let (vm, rest) = rest.split_once(": notice at ")?;
    let (notice, rest) = rest.split_once(" us; ms after it:")?;
    let notice_us = notice.trim().parse().ok()?;
    let mut marks = BTreeMap::new();
    for part in rest.split(',') {
        let (name, ms) = part.trim().split_once(' ')?;
        let mark = HV_MARKS.iter().find(|m| **m == name)?;
        marks.insert(*mark, ms.trim().parse().ok()?);
    }
    Some((vm.to_string(), notice_us, marks))
}

/// A guest's `net: back-end 1 went away (...) ... (at T us)` contains this.
pub const WENT_AWAY: &str = " went away (generation ";
/// A guest's reconnection: `net: reconnected to back-end 1 (generation 1) ... (at T us)`.
pub const RECONNECTED: &str = "net: reconnected to back-end ";

/// The phases of a recovery, each as ms after the crash, in the order they happen: the
/// restarted driver domain's own (`entered` its code, `nic_up`, `gateway` answered its ping,
/// `serving` its front-ends) and the guests' (the first to notice, the last to reconnect, the
/// first frame a guest received). Times are the counter every VM shares.
pub const PHASES: [&str; 7] = [
    "entered",
    "nic_up",
    "gateway",
    "serving",
    "noticed",
    "reconnected",
    "first_frame",
];

/// The `at T us` times of a line, in order.
pub fn times_us(text: &str) -> Vec<u64> {
    text.match_indices("at ")
        .filter_map(|(i, _)| {
            let rest = &text[i + 3..];
            let (number, tail) = rest.split_once(' ')?;
            tail.starts_with("us")
                .then(|| number.parse().ok())
                .flatten()
        })
        .collect()
}

/// The milliseconds in `<prefix>N ms...`, for a line's text after the console prefix.
pub fn parse_ms(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?;
    let (number, _) = rest.split_once(" ms")?;
    number.trim().parse().ok()
}

/// The figures of every guest that printed `prefix`: (guest, milliseconds), in topology order.
fn guest_figures(topology: &Topology, boot: &Boot, prefix: &str) -> Vec<(String, u64)> {
    topology
        .vms
        .iter()
        .filter(|vm| vm.kind == VmKind::Guest)
        .flat_map(|vm| {
            boot.vm_lines(&vm.name)
                .filter_map(|l| parse_ms(l, prefix))
                .map(|ms| (vm.name.clone(), ms))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What one boot with a driver-domain restart measured (the demo's line and the bench's
/// `restart` group both read it).
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    /// The crash to the first frame a guest received through the new incarnation: the
    /// earliest guest's figure.
    pub recovered_ms: u64,
    /// The longest gap between data frames each guest saw across the reconnection, by guest
    /// (guests that saw none are absent: they received no data, e.g. an iperf3 client).
    pub gaps_ms: BTreeMap<String, u64>,
    /// [`PHASES`] that could be timed -> ms after the crash; empty without the driver
    /// domain's crash line (a crash not of the test hook).
    pub phases_ms: BTreeMap<&'static str, f64>,
    /// [`SPANS`] that could be timed -> ms each (needs the crash line, the hypervisor's
    /// timeline and the restarted driver domain's).
    pub spans_ms: BTreeMap<&'static str, f64>,
}

impl Recovery {
    /// The longest gap any guest saw.
    pub fn longest_gap_ms(&self) -> Option<u64> {
        self.gaps_ms.values().copied().max()
    }
}

/// The figures of a boot in which the driver domain was restarted; `Err` says what is missing.
pub fn recovery(topology: &Topology, boot: &Boot) -> Result<Recovery, String> {
    if !boot.lines.iter().any(|l| l.contains(RESTARTING)) {
        return Err("the driver domain was never restarted".into());
    }
    let noticed = guest_figures(topology, boot, FIRST_FRAME)
        .into_iter()
        .map(|(_, ms)| ms)
        .min()
        .ok_or("no guest received a frame through the new incarnation")?;
    let mut gaps_ms = BTreeMap::new();
    for (guest, ms) in guest_figures(topology, boot, DATA_GAP) {
        let gap = gaps_ms.entry(guest).or_insert(ms);
        *gap = (*gap).max(ms);
    }
    let phases_ms = phases(topology, boot);
    let spans_ms = spans(topology, boot, &phases_ms);
    // From the crash when it is known; otherwise from the first guest noticing.
    let recovered_ms = phases_ms
        .get("first_frame")
        .map_or(noticed, |&ms| ms.round() as u64);
    Ok(Recovery {
        recovered_ms,
        gaps_ms,
        phases_ms,
        spans_ms,
    })
}

/// The first restart's [`SPANS`], from its phases and the hypervisor's timeline for it.
fn spans(
    topology: &Topology,
    boot: &Boot,
    phases_ms: &BTreeMap<&'static str, f64>,
) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let dds: Vec<&str> = topology
        .vms
        .iter()
        .filter(|vm| vm.kind == VmKind::DriverDomain)
        .map(|vm| vm.name.as_str())
        .collect();
    let Some(crash) = dds
        .iter()
        .flat_map(|dd| boot.vm_lines(dd))
        .filter(|l| l.starts_with(CRASH))
        .find_map(|l| times_us(l).first().copied())
    else {
        return out;
    };
    let Some((_, notice, marks)) = boot
        .vm_lines("hv")
        .filter_map(parse_hv_timeline)
        .find(|(vm, notice, _)| dds.contains(&vm.as_str()) && *notice >= crash)
    else {
        return out;
    };
    let round = |ms: f64| (ms * 10.0).round() / 10.0;
    let notice_ms = round(notice.saturating_sub(crash) as f64 / 1000.0);
    out.insert("hv_notice", notice_ms);
    // Consecutive differences of the marks that are there, each from the one before.
    let mut before = 0.0;
    for (span, mark) in SPANS[1..5].iter().zip(&HV_MARKS[..4]) {
        if let Some(&ms) = marks.get(mark) {
            out.insert(*span, round(ms - before));
            before = ms;
        }
    }
    // The rest from the phases (ms after the crash), the first from the RAM loaded.
    let loaded = notice_ms + before;
    let mut before = Some(loaded).filter(|_| marks.contains_key("load"));
    for (span, phase) in [
        ("hv_start", "entered"),
        ("dd_boot_to_nic", "nic_up"),
        ("dd_to_serving", "serving"),
        ("handshake", "first_frame"),
    ] {
        let at = phases_ms.get(phase).copied();
        if let (Some(from), Some(to)) = (before, at) {
            out.insert(span, round(to - from));
        }
        before = at;
    }
    out
}

/// The first restart's phases (see [`PHASES`]), from the first test crash.
fn phases(topology: &Topology, boot: &Boot) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let dds: Vec<&str> = topology
        .vms
        .iter()
        .filter(|vm| vm.kind == VmKind::DriverDomain)
        .map(|vm| vm.name.as_str())
        .collect();
    let dd_lines = || dds.iter().flat_map(|dd| boot.vm_lines(dd));
    let Some(crash) = dd_lines()
        .filter(|l| l.starts_with(CRASH))
        .find_map(|l| times_us(l).first().copied())
    else {
        return out;
    };
    let after = |us: u64| (us.saturating_sub(crash) as f64 / 100.0).round() / 10.0;
    if let Some(times) = dd_lines()
        .filter(|l| l.starts_with(TIMELINE))
        .map(times_us)
        .find(|t| t.first().is_some_and(|&us| us >= crash))
    {
        for (phase, us) in PHASES[..4].iter().zip(times) {
            out.insert(*phase, after(us));
        }
    }
    // Each guest's first time of each kind past the crash.
    let guest_times = |matches: &dyn Fn(&str) -> bool| -> Vec<u64> {
        topology
            .vms
            .iter()
            .filter(|vm| vm.kind == VmKind::Guest)
            .filter_map(|vm| {
                boot.vm_lines(&vm.name)
                    .filter(|l| matches(l))
                    .filter_map(|l| times_us(l).last().copied())
                    .find(|&us| us >= crash)
            })
            .collect()
    };
    let noticed = guest_times(&|l| l.contains(WENT_AWAY));
    let reconnected = guest_times(&|l| l.starts_with(RECONNECTED));
    let first_frame = guest_times(&|l| l.starts_with(FIRST_FRAME));
    for (phase, us) in [
        ("noticed", noticed.iter().min()),
        ("reconnected", reconnected.iter().max()),
        ("first_frame", first_frame.iter().min()),
    ] {
        if let Some(&us) = us {
            out.insert(phase, after(us));
        }
    }
    out
}

/// `crash -> entered 41.2 ms, nic_up 60.3 ms, ...` in [`PHASES`] order.
pub fn phases_text(phases_ms: &BTreeMap<&'static str, f64>) -> String {
    let parts: Vec<String> = PHASES
        .iter()
        .filter_map(|p| phases_ms.get(p).map(|ms| format!("{p} {ms:.1}")))
        .collect();
    format!("ms after the crash: {}", parts.join(", "))
}

/// `hv_notice 1.0, hv_stop 0.1, ...` in [`SPANS`] order.
pub fn spans_text(spans_ms: &BTreeMap<&'static str, f64>) -> String {
    let parts: Vec<String> = SPANS
        .iter()
        .filter_map(|s| spans_ms.get(s).map(|ms| format!("{s} {ms:.1}")))
        .collect();
    parts.join(", ")
}

/// A guest's UDP echo tally (`vm_net::udp_echo`): `UDP ECHO 10.0.2.17: 160 sent, 151
/// answered, 9 lost; longest silence 548 ms (answered 60 before, 91 after, from seq 69); 0
/// duplicate(s), 0 stray(s)`.
pub const UDP_ECHO: &str = "UDP ECHO ";

/// What a guest's `UDP ECHO` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEcho {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    /// The longest silence between two answers, and the answers before and after it.
    pub silence_ms: u64,
    pub answered_before: u64,
    pub answered_after: u64,
}

/// The tally of a guest's `UDP ECHO` line (the text after the console prefix); None for
/// another line, or one without a silence (nothing to compare before and after).
pub fn parse_udp_echo(text: &str) -> Option<UdpEcho> {
    let (_, rest) = text.strip_prefix(UDP_ECHO)?.split_once(": ")?;
    let number_before = |word: &str| -> Option<u64> {
        let at = rest.find(word)?;
        rest[..at].split_whitespace().last()?.parse().ok()
    };
    let number_after = |word: &str| -> Option<u64> {
        let at = rest.find(word)? + word.len();
        rest[at..].split_whitespace().next()?.parse().ok()
    };
    Some(UdpEcho {
        sent: number_before(" sent")?,
        answered: number_before(" answered")?,
        lost: number_before(" lost")?,
        silence_ms: number_after("longest silence ")?,
        answered_before: number_before(" before,")?,
        answered_after: number_before(" after,")?,
    })
}

/// How many frames a guest's [`WENT_AWAY`] line says go again to the new back-end (`net:
/// back-end 1 went away (generation 0 -> 1); reconnecting, 6 frames it had not given back go
/// again (at 6258974 us)`, the text after the console prefix); None for another line.
pub fn parse_sent_again(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("net: back-end ")?;
    let (_, rest) = rest.split_once(WENT_AWAY)?;
    let (_, rest) = rest.split_once("reconnecting, ")?;
    let (count, rest) = rest.split_once(' ')?;
    rest.starts_with("frames it had not given back go again")
        .then(|| count.parse().ok())
        .flatten()
}

/// The `driver-domain restart` check of a boot, if a driver domain of the topology crashes on
/// purpose (none otherwise).
pub fn checks(topology: &Topology, boot: &Boot) -> Vec<Check> {
    let crashing = topology
        .vms
        .iter()
        .any(|vm| vm.kind == VmKind::DriverDomain && vm.setting("test_crash").is_some());
    if !crashing {
        return Vec::new();
    }
    let mut checks = vec![match check(topology, boot) {
        Ok(detail) => Check::new(CHECK, true, detail),
        Err(why) => Check::new(CHECK, false, why),
    }];
    // Where the recovery's time went (information: it passes whenever it could be timed).
    if let Ok(r) = recovery(topology, boot) {
        if !r.phases_ms.is_empty() {
            let mut detail = phases_text(&r.phases_ms);
            if !r.spans_ms.is_empty() {
                detail += &format!("; spans (ms): {}", spans_text(&r.spans_ms));
            }
            checks.push(Check::new(PHASES_CHECK, true, detail));
        }
    }
    checks
}

fn check(topology: &Topology, boot: &Boot) -> Result<String, String> {
    let recovery = recovery(topology, boot)?;
    let sent = boot
        .lines
        .iter()
        .filter_map(|l| parse_result_line(l))
        .filter_map(Result::ok)
        .find(|r| r.role == Role::Client && !r.receiver)
        .ok_or("no iperf3 client finished its TCP test across the restart")?;
    let bytes = sent
        .bytes
        .ok_or("the iperf3 client printed no byte count")?;
    let gap = recovery
        .longest_gap_ms()
        .ok_or("no guest saw data frames again after the restart")?;
    Ok(format!(
        "recovered in {} ms, tcp stream survived ({bytes} bytes sent, {gap} ms gap)",
        recovery.recovered_ms
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TOPOLOGY: &str = r#"
[machine]
cpus = 2
memory_mib = 512

[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 16
vcpus = 1
settings = { test_crash = "panic" }

[[vm]]
name = "s"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "iperf", ip = "10.0.2.20/24" }

[[vm]]
name = "c"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "iperf", ip = "10.0.2.21/24", iperf = "client", iperf_server = "10.0.2.20" }
"#;

    fn boot(lines: &[&str]) -> Boot {
        Boot {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            exited: true,
            timed_out: false,
            stopped_early: false,
            elapsed: Duration::from_secs(1),
        }
    }

    fn good_lines() -> Vec<&'static str> {
        vec![
            "[hv] warning: driver domain dd reset itself (PSCI SYSTEM_RESET: a reset or a \
             panic); restarting it (crash 1 within 60 s)",
            "[s] net: first frame through the back-end again 287 ms after it went away",
            "[c] net: first frame through the back-end again 307 ms after it went away",
            "[s] net: data frames again after a gap of 395 ms",
            "[c] net: data frames again after a gap of 120 ms",
            "[c] IPERF client 10.0.2.21 -> 10.0.2.20: tcp 12.00 s, 109136359 bytes, 72.73 Mbit/s, \
             sender",
            "[s] IPERF server 10.0.2.20 <- 10.0.2.21: tcp 12.02 s, 109557593 bytes, 72.90 \
             Mbit/s, receiver",
        ]
    }

    #[test]
    fn the_demo_line_takes_the_first_frame_the_client_bytes_and_the_longest_gap() {
        let topology = Topology::from_toml_str(TOPOLOGY).unwrap();
        let checks = checks(&topology, &boot(&good_lines()));
        assert_eq!(checks.len(), 1, "no phases without the crash's time");
        assert_eq!(
            checks[0].summary_line(),
            "PASS driver-domain restart: recovered in 287 ms, tcp stream survived (109136359 \
             bytes sent, 395 ms gap)"
        );
    }

    #[test]
    fn each_missing_piece_fails_with_its_reason() {
        let topology = Topology::from_toml_str(TOPOLOGY).unwrap();
        for (drop, why) in [
            ("restarting it", "never restarted"),
            ("first frame", "no guest received a frame"),
            ("IPERF client", "no iperf3 client finished"),
            ("data frames again", "no guest saw data frames again"),
        ] {
            let lines: Vec<&str> = good_lines()
                .into_iter()
                .filter(|l| !l.contains(drop))
                .collect();
            let check = &checks(&topology, &boot(&lines))[0];
            assert!(
                !check.pass && check.detail.contains(why),
                "{drop}: {check:?}"
            );
        }
    }

    #[test]
    fn the_demo_topology_crashes_its_driver_domain_under_a_stream() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/restart.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let topology = Topology::from_toml_str(&text).unwrap();
        let checks = checks(&topology, &boot(&good_lines()));
        assert_eq!(checks.len(), 1, "the demo topology must get the check");
        assert_eq!(checks[0].name, CHECK);
        assert!(topology
            .vms
            .iter()
            .any(|vm| vm.setting("iperf") == Some("client")));
    }

    #[test]
    fn topologies_without_a_crash_hook_have_no_such_check() {
        let calm = TOPOLOGY.replace("settings = { test_crash = \"panic\" }\n", "");
        let topology = Topology::from_toml_str(&calm).unwrap();
        assert!(checks(&topology, &boot(&good_lines())).is_empty());
        assert_eq!(
            parse_ms("net: data frames again after a gap of 12 ms", DATA_GAP),
            Some(12)
        );
        assert_eq!(
            parse_ms("net: data frames again after a gap of x ms", DATA_GAP),
            None
        );
    }

    #[test]
    fn the_recovery_is_the_earliest_first_frame_and_each_guest_keeps_its_longest_gap() {
        let topology = Topology::from_toml_str(TOPOLOGY).unwrap();
        let mut lines = good_lines();
        lines.push("[c] net: data frames again after a gap of 140 ms");
        let r = recovery(&topology, &boot(&lines)).unwrap();
        assert_eq!(r.recovered_ms, 287);
        assert_eq!(
            r.gaps_ms.into_iter().collect::<Vec<_>>(),
            vec![("s".to_string(), 395), ("c".to_string(), 140)]
                .into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        // Lines of the driver domain or a guest not in the topology do not count.
        let strays = [
            "[hv] warning: driver domain dd reset itself; restarting it (crash 1 within 60 s)",
            "[dd] net: first frame through the back-end again 3 ms after it went away",
            "[x] net: data frames again after a gap of 9999 ms",
            "[s] net: first frame through the back-end again 40 ms after it went away",
        ];
        let r = recovery(&topology, &boot(&strays)).unwrap();
        assert_eq!((r.recovered_ms, r.longest_gap_ms()), (40, None));
    }

    #[test]
    fn the_went_away_line_says_how_many_frames_go_again() {
        assert_eq!(
            parse_sent_again(
                "net: back-end 1 went away (generation 0 -> 1); reconnecting, 6 frames it had \
                 not given back go again (at 6258974 us)"
            ),
            Some(6)
        );
        assert_eq!(
            parse_sent_again("net: back-end 1 stopped for good (the hypervisor left it stopped)"),
            None
        );
        assert_eq!(
            parse_sent_again("net: back-end 1 went away (generation 0 -> 1); reconnecting, x"),
            None
        );
    }

    #[test]
    fn the_udp_echo_line_parses_and_other_lines_do_not() {
        let line = "UDP ECHO 10.0.2.17: 160 sent, 151 answered, 9 lost; longest silence 548 ms \
                    (answered 60 before, 91 after, from seq 69); 0 duplicate(s), 0 stray(s)";
        assert_eq!(
            parse_udp_echo(line),
            Some(UdpEcho {
                sent: 160,
                answered: 151,
                lost: 9,
                silence_ms: 548,
                answered_before: 60,
                answered_after: 91,
            })
        );
        assert_eq!(
            parse_udp_echo(
                "UDP ECHO 10.0.2.17: 3 sent, 0 answered, 3 lost; no silence between answers; \
                 0 duplicate(s), 0 stray(s)"
            ),
            None
        );
        assert_eq!(parse_udp_echo("PING 10.0.2.17: 10/10 replies"), None);
    }

    #[test]
    fn the_phases_line_up_the_restarted_driver_domain_and_the_guests_with_the_crash() {
        let topology = Topology::from_toml_str(TOPOLOGY).unwrap();
        let mut lines = good_lines();
        lines.extend([
            "[dd] test crash: Panic now (at 5000000 us)",
            "[dd] restart timeline: entered at 5030000 us, NIC up at 5050500 us, gateway \
             answered at 5070000 us, serving at 5070100 us",
            "[s] net: back-end 1 went away (generation 0 -> 1); reconnecting, frames in flight \
             are lost (at 5002000 us)",
            "[c] net: back-end 1 went away (generation 0 -> 1); reconnecting, frames in flight \
             are lost (at 5001000 us)",
            "[s] net: reconnected to back-end 1 (generation 1) 80 ms after it went away (at \
             5082000 us)",
            "[c] net: reconnected to back-end 1 (generation 1) 90 ms after it went away (at \
             5091000 us)",
            "[s] net: first frame through the back-end again 95 ms after it went away (at \
             5097000 us)",
            "[c] net: first frame through the back-end again 99 ms after it went away (at \
             5100000 us)",
        ]);
        let r = recovery(&topology, &boot(&lines)).unwrap();
        let phases: Vec<(&str, f64)> = PHASES
            .iter()
            .map(|p| (*p, *r.phases_ms.get(p).unwrap()))
            .collect();
        assert_eq!(
            phases,
            [
                ("entered", 30.0),
                ("nic_up", 50.5),
                ("gateway", 70.0),
                ("serving", 70.1),
                ("noticed", 1.0),
                ("reconnected", 91.0),
                ("first_frame", 97.0),
            ]
        );
        // The recovery counts from the crash now, not from the guests noticing.
        assert_eq!(r.recovered_ms, 97);
        assert!(
            r.spans_ms.is_empty(),
            "no spans without the hypervisor's timeline"
        );
        let checks = checks(&topology, &boot(&lines));
        assert_eq!(checks.len(), 2);
        assert_eq!(
            checks[1].summary_line(),
            "PASS driver-domain restart phases: ms after the crash: entered 30.0, nic_up 50.5, \
             gateway 70.0, serving 70.1, noticed 1.0, reconnected 91.0, first_frame 97.0"
        );
        assert_eq!(times_us("at 12 us, at x us, at 7 ms, at 3 us"), vec![12, 3]);
    }

    #[test]
    fn the_spans_cut_the_recovery_into_the_hypervisors_the_driver_domains_and_the_handshakes() {
        let topology = Topology::from_toml_str(TOPOLOGY).unwrap();
        let mut lines = good_lines();
        lines.extend([
            // A timeline of an earlier restart and one of a guest: neither counts.
            "[hv] restart timeline: VM dd: notice at 4000000 us; ms after it: stop 9.0",
            "[hv] restart timeline: VM s: notice at 5001000 us; ms after it: stop 9.0",
            "[dd] test crash: Panic now (at 5000000 us)",
            "[hv] restart timeline: VM dd: notice at 5001500 us; ms after it: stop 0.2, \
             teardown 10.0, zero 20.5, load 22.0, start 22.5",
            // As the driver domain prints it since it opens its control pages before the
            // NIC: the marks after the four phases are not phases.
            "[dd] restart timeline: entered at 5030000 us, NIC up at 5050500 us, gateway \
             answered at 5070000 us, serving at 5070100 us; event channels up at 5031000 us, \
             front-ends offered InitWait at 5032000 us",
            "[s] net: first frame through the back-end again 95 ms after it went away (at \
             5097000 us)",
        ]);
        let r = recovery(&topology, &boot(&lines)).unwrap();
        let spans: Vec<(&str, f64)> = SPANS
            .iter()
            .map(|s| (*s, *r.spans_ms.get(s).unwrap()))
            .collect();
        assert_eq!(
            spans,
            [
                ("hv_notice", 1.5),
                ("hv_stop", 0.2),
                ("hv_teardown", 9.8),
                ("hv_zero", 10.5),
                ("hv_load", 1.5),
                ("hv_start", 6.5),
                ("dd_boot_to_nic", 20.5),
                ("dd_to_serving", 19.6),
                ("handshake", 26.9),
            ]
        );
        // They add up to the recovery.
        let sum: f64 = r.spans_ms.values().sum();
        assert!((sum - r.recovered_ms as f64).abs() < 0.5, "{sum}");
        let checks = checks(&topology, &boot(&lines));
        assert!(checks[1].detail.ends_with(
            "; spans (ms): hv_notice 1.5, hv_stop 0.2, hv_teardown 9.8, hv_zero 10.5, hv_load \
             1.5, hv_start 6.5, dd_boot_to_nic 20.5, dd_to_serving 19.6, handshake 26.9"
        ));
        // A timeline without zero (never printed so, but) skips that span, not the others.
        let (vm, notice, marks) = parse_hv_timeline(
            "restart timeline: VM dd: notice at 7 us; ms after it: stop 0.5, load 3.0",
        )
        .unwrap();
        assert_eq!((vm.as_str(), notice, marks.len()), ("dd", 7, 2));
        for bad in [
            "restart timeline: VM dd: notice at x us; ms after it: stop 0.5",
            "restart timeline: VM dd: notice at 7 us; ms after it: stop x",
            "restart timeline: VM dd: notice at 7 us; ms after it: lunch 0.5",
            "restart timeline: entered at 5030000 us, NIC up at 5050500 us",
        ] {
            assert_eq!(parse_hv_timeline(bad), None, "{bad}");
        }
    }
}
