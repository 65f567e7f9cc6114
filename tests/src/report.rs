//! Turning a boot's console into named checks: the `PASS <what>` / `FAIL <what>: <why>` summary
//! lines that `./run.sh` prints, and the same results as JSON for scripts.

use serde::Serialize;

use crate::console;
use crate::qemu::Boot;
use crate::topology::Topology;
use shared_abi::bundle::VmKind;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, pass: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            pass,
            detail: detail.into(),
        }
    }

    /// `PASS <name>: <detail>` or `FAIL <name>: <detail>`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} {}: {}",
            if self.pass { "PASS" } else { "FAIL" },
            self.name,
            self.detail
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub topology: String,
    pub vms: Vec<String>,
    pub elapsed_s: f64,
    pub checks: Vec<Check>,
    pub pass: bool,
}

/// The reason the hypervisor gave for killing `vm`, if it did.
pub fn kill_reason(boot: &Boot, vm: &str) -> Option<String> {
    let marker = format!("killing VM {vm}: ");
    boot.lines.iter().find_map(|l| {
        l.split_once(marker.as_str())
            .map(|(_, why)| why.to_string())
    })
}

/// The checks every boot of a topology must pass: the hypervisor came up on every pCPU, each VM
/// reported `REPORT ok`, nobody was killed, and the machine powered itself off at the end; then
/// one check per ping target of every guest with a `ping` setting ([`ping_checks`]), and the
/// balloon move's check if the topology moves memory ([`crate::balloon::checks`]).
pub fn evaluate(topology: &Topology, boot: &Boot) -> Vec<Check> {
    let mut checks = Vec::new();
    let cpus = topology.machine.cpus as usize;
    let online = (1..cpus)
        .filter(|i| boot.has(&format!("pCPU {i} online")))
        .count()
        + 1;
    checks.push(Check::new(
        "boot",
        boot.has("[hv] sluice hypervisor:") && online == cpus,
        format!(
            "hypervisor up on {online}/{cpus} pCPU(s), {} VM(s) in the topology",
            topology.vms.len()
        ),
    ));
    for vm in &topology.vms {
        let report = boot.vm_lines(&vm.name).find(|l| l.starts_with("REPORT "));
        let check = match (report, kill_reason(boot, &vm.name)) {
            (_, Some(why)) => Check::new(
                format!("{} reported in", vm.name),
                false,
                format!("killed: {why}"),
            ),
            (Some(line), None) => Check::new(
                format!("{} reported in", vm.name),
                line.starts_with("REPORT ok"),
                line.to_string(),
            ),
            (None, None) => Check::new(
                format!("{} reported in", vm.name),
                false,
                "no REPORT line on its console",
            ),
        };
        checks.push(check);
    }
    let kills: Vec<&String> = boot
        .lines
        .iter()
        .filter(|l| l.contains("killing VM "))
        .collect();
    checks.push(Check::new(
        "isolation",
        kills.is_empty(),
        if kills.is_empty() {
            "no VM was killed".to_string()
        } else {
            format!("{} kill(s): {}", kills.len(), kills[0])
        },
    ));
    let shutdown = boot.exited && boot.has("all VMs have stopped; powering off");
    let detail = if shutdown {
        format!(
            "every VM stopped and the hypervisor powered off after {:.1} s",
            boot.elapsed.as_secs_f64()
        )
    } else if boot.timed_out {
        format!(
            "QEMU was still running after {:.0} s (killed); last line: {}",
            boot.elapsed.as_secs_f64(),
            boot.lines
                .last()
                .map(String::as_str)
                .unwrap_or("<no output>")
        )
    } else {
        format!(
            "QEMU ended without the power-off message; last line: {}",
            boot.lines
                .last()
                .map(String::as_str)
                .unwrap_or("<no output>")
        )
    };
    checks.push(Check::new("shutdown", shutdown, detail));
    checks.extend(ping_checks(topology, boot));
    checks.extend(crate::balloon::checks(topology, boot));
    checks.extend(crate::restart::checks(topology, boot));
    checks
}

/// A `net` guest's summary of its pings to one target (see [`console::PING_SUMMARY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingSummary {
    /// The target as printed (an IPv4 address).
    pub target: String,
    pub replies: u32,
    pub sent: u32,
    /// The round-trip times as printed after `rtt `, e.g. `min/avg/max 0.412/0.532/0.811 ms`;
    /// `None` when the line has none (no replies).
    pub rtt: Option<String>,
}

impl PingSummary {
    /// Every request answered, and there was at least one.
    pub fn all_answered(&self) -> bool {
        self.sent > 0 && self.replies == self.sent
    }

    /// `10/10, rtt min/avg/max 0.412/0.532/0.811 ms` when all were answered, otherwise
    /// `3/10 replies[, rtt ...]` (`0/0 replies` when nothing was sent).
    pub fn detail(&self) -> String {
        let mut out = format!("{}/{}", self.replies, self.sent);
        if !self.all_answered() {
            out += " replies";
        }
        if let Some(rtt) = &self.rtt {
            out += &format!(", rtt {rtt}");
        }
        out
    }
}

/// Parses `PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.412/0.532/0.811 ms` (or
/// `PING 10.0.2.17: 0/10 replies`) anywhere in `line`; `None` if the line holds no such summary.
pub fn parse_ping_summary(line: &str) -> Option<PingSummary> {
    let (_, rest) = line.split_once(console::PING_SUMMARY)?;
    let (target, rest) = rest.split_once(": ")?;
    if target.is_empty() || target.contains(char::is_whitespace) {
        return None;
    }
    let mut words = rest.splitn(2, ' ');
    let (replies, sent) = words.next()?.split_once('/')?;
    let (replies, sent) = (replies.parse().ok()?, sent.parse().ok()?);
    let tail = words.next()?;
    if !tail.starts_with(console::PING_REPLIES) {
        return None;
    }
    let rtt = tail
        .split_once(console::PING_RTT)
        .map(|(_, rtt)| rtt.trim().to_string())
        .filter(|rtt| !rtt.is_empty());
    Some(PingSummary {
        target: target.to_string(),
        replies,
        sent,
        rtt,
    })
}

/// One target of a guest's `ping` setting, and whom it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingTarget {
    /// The guest that pings.
    pub vm: String,
    /// The target as written in the setting (trimmed).
    pub target: String,
    /// The VM whose `ip` is the target, `host` for the guest's gateway, else the target itself.
    pub peer: String,
}

impl PingTarget {
    /// `ping guest1 -> guest2`.
    pub fn check_name(&self) -> String {
        format!("ping {} -> {}", self.vm, self.peer)
    }
}

/// The targets of every guest's `ping` setting (comma-separated IPv4 addresses), in topology
/// and then setting order.
pub fn ping_targets(topology: &Topology) -> Vec<PingTarget> {
    let mut out = Vec::new();
    for vm in topology.vms.iter().filter(|v| v.kind == VmKind::Guest) {
        let Some(list) = vm.setting("ping") else {
            continue;
        };
        for target in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let peer = match target.parse::<std::net::Ipv4Addr>() {
                Ok(address) => topology
                    .vms
                    .iter()
                    .find(|other| other.ip() == Ok(address))
                    .map(|other| other.name.clone())
                    .or_else(|| (vm.gateway() == Ok(address)).then(|| "host".to_string())),
                Err(_) => None,
            };
            out.push(PingTarget {
                vm: vm.name.clone(),
                target: target.to_string(),
                peer: peer.unwrap_or_else(|| target.to_string()),
            });
        }
    }
    out
}

/// One check per [`ping_targets`] entry, named `ping <vm> -> <peer>`: it passes when the guest
/// printed a summary for that target with every request answered (and at least one sent). A
/// target listed twice is matched with the guest's second summary for it, and so on.
pub fn ping_checks(topology: &Topology, boot: &Boot) -> Vec<Check> {
    let targets = ping_targets(topology);
    let mut checks = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let occurrence = targets[..i]
            .iter()
            .filter(|earlier| earlier.vm == t.vm && earlier.target == t.target)
            .count();
        let summary = boot
            .vm_lines(&t.vm)
            .filter_map(parse_ping_summary)
            .filter(|s| s.target == t.target)
            .nth(occurrence);
        checks.push(match summary {
            Some(s) => Check::new(t.check_name(), s.all_answered(), s.detail()),
            None => Check::new(
                t.check_name(),
                false,
                format!(
                    "{} printed no result for {} ({})",
                    t.vm,
                    t.target,
                    why_unfinished(boot, &t.vm)
                ),
            ),
        });
    }
    checks
}

/// Why a `net` guest may lack a result line: killed, ended (its REPORT line), never connected,
/// or still running when the boot ended.
fn why_unfinished(boot: &Boot, vm: &str) -> String {
    if let Some(why) = kill_reason(boot, vm) {
        return format!("it was killed: {why}");
    }
    if let Some(report) = boot.vm_lines(vm).find(|l| l.starts_with("REPORT ")) {
        return format!("it ended with: {report}");
    }
    if !boot.vm_lines(vm).any(|l| l.contains(console::NET_UP)) {
        return format!("it never printed '{}' and did not finish", console::NET_UP);
    }
    "it did not finish".to_string()
}

/// The highest `spoofed N` count that the switch counters among `lines` (a driver domain's
/// console, prefix stripped) show for the port of guest VM `guest_id`; `None` if no counters
/// entry for that port was printed (see [`port_drop_count`]).
pub fn spoofed_count<'a>(lines: impl IntoIterator<Item = &'a str>, guest_id: u16) -> Option<u64> {
    port_drop_count(lines, guest_id, console::SWITCH_SPOOFED)
}

/// The highest count after `counter` (like `spoofed `, `spoofip `, `floodlim `) that the switch
/// counters among `lines` (a driver domain's console, prefix stripped) show for the port of
/// guest VM `guest_id`; `None` if no counters entry for that port was printed. An entry starts
/// at `guest <id>` (a whole number) and ends at the next `guest ` or the end of the line, so it
/// does not matter whether the switch prints its ports on one line or one per line.
pub fn port_drop_count<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    guest_id: u16,
    counter: &str,
) -> Option<u64> {
    let id = guest_id.to_string();
    let mut best = None;
    for line in lines {
        let starts: Vec<usize> = line
            .match_indices(console::SWITCH_GUEST_PORT)
            .map(|(i, _)| i)
            .collect();
        for (n, &start) in starts.iter().enumerate() {
            let entry = &line[start..starts.get(n + 1).copied().unwrap_or(line.len())];
            let after = &entry[console::SWITCH_GUEST_PORT.len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if digits != id {
                continue;
            }
            if let Some(count) = entry
                .split_once(counter)
                .and_then(|(_, rest)| leading_u64(rest))
            {
                best = Some(best.map_or(count, |b: u64| b.max(count)));
            }
        }
    }
    best
}

fn leading_u64(text: &str) -> Option<u64> {
    text.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// The number just before `phrase` (like `not delivered (no buffer)`) in the driver domain's
/// closing line for front-end `id` (`front-end 5 closed: sent 3 frames (0 dropped), received
/// 140, 12 not delivered (no buffer), ...`); the highest if it closed more than once.
pub fn front_end_closed_count<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    id: u16,
    phrase: &str,
) -> Option<u64> {
    let start = console::front_end_closed(id);
    lines
        .into_iter()
        .filter(|l| l.contains(&start))
        .filter_map(|l| {
            let before = l.split_once(phrase)?.0.trim_end();
            let digits = before.rsplit(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse::<u64>().ok()
        })
        .max()
}

pub fn report(topology_name: &str, topology: &Topology, boot: &Boot, checks: Vec<Check>) -> Report {
    Report {
        topology: topology_name.to_string(),
        vms: topology.vms.iter().map(|v| v.name.clone()).collect(),
        elapsed_s: boot.elapsed.as_secs_f64(),
        pass: checks.iter().all(|c| c.pass),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn topology() -> Topology {
        Topology::from_toml_str(
            r#"
[machine]
cpus = 2
memory_mib = 256
[[vm]]
name = "a"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
[[vm]]
name = "b"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
"#,
        )
        .unwrap()
    }

    fn boot(lines: &[&str], exited: bool) -> Boot {
        Boot {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            timed_out: !exited,
            stopped_early: false,
            exited,
            elapsed: Duration::from_millis(1500),
        }
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let b = boot(
            &[
                "[hv] sluice hypervisor: 2 pCPU(s)",
                "[hv] pCPU 1 online",
                "[a] REPORT ok: a done",
                "[b] REPORT ok: b done",
                "[hv] all VMs have stopped; powering off",
            ],
            true,
        );
        let checks = evaluate(&topology(), &b);
        assert!(checks.iter().all(|c| c.pass), "{checks:?}");
        assert_eq!(checks.len(), 5);
        assert_eq!(
            checks[1].summary_line(),
            "PASS a reported in: REPORT ok: a done"
        );
    }

    #[test]
    fn a_killed_vm_and_a_timeout_fail_with_reasons() {
        let b = boot(
            &[
                "[hv] sluice hypervisor: 2 pCPU(s)",
                "[hv] ERROR: killing VM b: stage-2 fault at IPA 0x9000000",
                "[a] REPORT ok: a done",
            ],
            false,
        );
        let checks = evaluate(&topology(), &b);
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.pass)
            .map(Check::summary_line)
            .collect();
        assert_eq!(
            failed,
            vec![
                "FAIL boot: hypervisor up on 1/2 pCPU(s), 2 VM(s) in the topology".to_string(),
                "FAIL b reported in: killed: stage-2 fault at IPA 0x9000000".to_string(),
                "FAIL isolation: 1 kill(s): [hv] ERROR: killing VM b: stage-2 fault at IPA 0x9000000".to_string(),
                "FAIL shutdown: QEMU was still running after 2 s (killed); last line: [a] REPORT ok: a done".to_string(),
            ]
        );
    }

    #[test]
    fn report_json_is_well_formed() {
        let b = boot(&["[a] REPORT fail: nope"], true);
        let t = topology();
        let checks = evaluate(&t, &b);
        let r = report("default", &t, &b, checks);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pass"], false);
        assert_eq!(json["vms"], serde_json::json!(["a", "b"]));
        assert!(json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"].is_string() && c["pass"].is_boolean()));
    }
    /// Driver domain `dd` (10.0.2.15), guests g1 (.16, pings g2, the host and the driver
    /// domain) and g2 (.17, pings g1, an outsider, and g1 again), g3 (no ping).
    fn net_topology() -> Topology {
        Topology::from_toml_str(
            r#"
[machine]
cpus = 2
memory_mib = 256
[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 16
vcpus = 1
settings = { ip = "10.0.2.15/24" }
[[vm]]
name = "g1"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.16/24", ping = "10.0.2.17, 10.0.2.2,10.0.2.15" }
[[vm]]
name = "g2"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.17/24", gateway = "10.0.2.3", ping = "10.0.2.16,10.0.2.2,,10.0.2.16" }
[[vm]]
name = "g3"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.18/24" }
"#,
        )
        .unwrap()
    }

    #[test]
    fn ping_summaries_parse() {
        let s = parse_ping_summary(
            "PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.412/0.532/0.811 ms",
        )
        .unwrap();
        assert_eq!(
            s,
            PingSummary {
                target: "10.0.2.17".into(),
                replies: 10,
                sent: 10,
                rtt: Some("min/avg/max 0.412/0.532/0.811 ms".into()),
            }
        );
        assert!(s.all_answered());
        assert_eq!(s.detail(), "10/10, rtt min/avg/max 0.412/0.532/0.811 ms");
        let s = parse_ping_summary("PING 10.0.2.2: 0/10 replies").unwrap();
        assert_eq!((s.replies, s.sent, s.rtt.as_deref()), (0, 10, None));
        assert!(!s.all_answered());
        assert_eq!(s.detail(), "0/10 replies");
        let s = parse_ping_summary("[INFO] PING 10.0.2.2: 7/10 replies, rtt min/avg/max 1/2/3 ms")
            .unwrap();
        assert_eq!(s.detail(), "7/10 replies, rtt min/avg/max 1/2/3 ms");
        // Nothing sent is not a success.
        let s = parse_ping_summary("PING 10.0.2.2: 0/0 replies").unwrap();
        assert!(!s.all_answered());
        for not_a_summary in [
            "ping 10.0.2.17: seq 3 rtt 0.532 ms",
            "PING 10.0.2.17: seq 3",
            "PING 10.0.2.17: 10/x replies",
            "PING 10.0.2.17: 10/10 answers",
            "PING 10.0.2.17 10/10 replies",
            "PING : 10/10 replies",
            "REPORT ok: net done",
        ] {
            assert_eq!(parse_ping_summary(not_a_summary), None, "{not_a_summary}");
        }
    }

    #[test]
    fn ping_targets_name_vms_the_host_or_the_address() {
        let t = net_topology();
        let plan: Vec<(String, String, String)> = ping_targets(&t)
            .into_iter()
            .map(|p| (p.vm, p.target, p.peer))
            .collect();
        let row = |vm: &str, target: &str, peer: &str| (vm.into(), target.into(), peer.into());
        assert_eq!(
            plan,
            [
                row("g1", "10.0.2.17", "g2"),
                row("g1", "10.0.2.2", "host"),
                row("g1", "10.0.2.15", "dd"),
                row("g2", "10.0.2.16", "g1"),
                // g2's gateway is 10.0.2.3, so 10.0.2.2 is just an address for it.
                row("g2", "10.0.2.2", "10.0.2.2"),
                row("g2", "10.0.2.16", "g1"),
            ]
        );
        assert_eq!(ping_targets(&t)[1].check_name(), "ping g1 -> host");
        assert!(ping_targets(&topology()).is_empty());
    }

    fn net_boot(lines: &[&str]) -> Boot {
        let mut all = vec![
            "[hv] sluice hypervisor: 2 pCPU(s)",
            "[hv] pCPU 1 online",
            "[dd] REPORT ok: dd served 3 front-end(s)",
            "[g3] net up: MAC 02:51:55:00:00:04, IP 10.0.2.18/24, gateway 10.0.2.2",
            "[g3] REPORT ok: net done",
        ];
        all.extend_from_slice(lines);
        all.push("[hv] all VMs have stopped; powering off");
        boot(&all, true)
    }

    fn summaries(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.name.starts_with("ping "))
            .map(Check::summary_line)
            .collect()
    }

    #[test]
    fn every_ping_target_becomes_a_check() {
        let b = net_boot(&[
            "[g1] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24, gateway 10.0.2.2",
            "[g2] net up: MAC 02:51:55:00:00:03, IP 10.0.2.17/24, gateway 10.0.2.3",
            "[g1] ping 10.0.2.17: seq 0 rtt 0.532 ms",
            "[g1] PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.412/0.532/0.811 ms",
            "[g2] PING 10.0.2.16: 10/10 replies, rtt min/avg/max 0.5/0.6/0.7 ms",
            // Another VM's summary for the same target is not g1's.
            "[g2] PING 10.0.2.2: 3/3 replies, rtt min/avg/max 1.0/1.1/1.2 ms",
            "[g1] PING 10.0.2.2: 3/3 replies, rtt min/avg/max 2.0/2.1/2.2 ms",
            "[g1] PING 10.0.2.15: 9/10 replies, rtt min/avg/max 0.1/0.2/9.9 ms",
            "[g2] PING 10.0.2.16: 0/10 replies",
            "[g1] REPORT fail: 1 target(s) did not answer every ping",
            "[g2] REPORT fail: 1 target(s) did not answer every ping",
        ]);
        let checks = evaluate(&net_topology(), &b);
        assert_eq!(
            summaries(&checks),
            [
                "PASS ping g1 -> g2: 10/10, rtt min/avg/max 0.412/0.532/0.811 ms",
                "PASS ping g1 -> host: 3/3, rtt min/avg/max 2.0/2.1/2.2 ms",
                "FAIL ping g1 -> dd: 9/10 replies, rtt min/avg/max 0.1/0.2/9.9 ms",
                "PASS ping g2 -> g1: 10/10, rtt min/avg/max 0.5/0.6/0.7 ms",
                "PASS ping g2 -> 10.0.2.2: 3/3, rtt min/avg/max 1.0/1.1/1.2 ms",
                // The second time g2 lists 10.0.2.16 is its second summary for it.
                "FAIL ping g2 -> g1: 0/10 replies",
            ]
        );
        // The ping checks come after the general ones.
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names[..7],
            [
                "boot",
                "dd reported in",
                "g1 reported in",
                "g2 reported in",
                "g3 reported in",
                "isolation",
                "shutdown"
            ]
        );
        assert_eq!(checks.len(), 7 + 6);
    }

    #[test]
    fn a_missing_ping_summary_says_what_became_of_the_guest() {
        // g1 was killed after one summary; g2 came up but never finished.
        let b = net_boot(&[
            "[g1] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24, gateway 10.0.2.2",
            "[g2] net up: MAC 02:51:55:00:00:03, IP 10.0.2.17/24, gateway 10.0.2.3",
            "[g1] PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.4/0.5/0.8 ms",
            "[hv] ERROR: killing VM g1: stage-2 fault at IPA 0x9000000",
        ]);
        assert_eq!(
            summaries(&ping_checks(&net_topology(), &b)),
            [
                "PASS ping g1 -> g2: 10/10, rtt min/avg/max 0.4/0.5/0.8 ms",
                "FAIL ping g1 -> host: g1 printed no result for 10.0.2.2 (it was killed: \
                 stage-2 fault at IPA 0x9000000)",
                "FAIL ping g1 -> dd: g1 printed no result for 10.0.2.15 (it was killed: \
                 stage-2 fault at IPA 0x9000000)",
                "FAIL ping g2 -> g1: g2 printed no result for 10.0.2.16 (it did not finish)",
                "FAIL ping g2 -> 10.0.2.2: g2 printed no result for 10.0.2.2 (it did not finish)",
                "FAIL ping g2 -> g1: g2 printed no result for 10.0.2.16 (it did not finish)",
            ]
        );
        // g1 gave up with a REPORT; g2 never came up.
        let b = net_boot(&["[g1] REPORT fail: front-end: back-end refused the connection"]);
        let lines = summaries(&ping_checks(&net_topology(), &b));
        assert_eq!(
            lines[0],
            "FAIL ping g1 -> g2: g1 printed no result for 10.0.2.17 (it ended with: REPORT fail: \
             front-end: back-end refused the connection)"
        );
        assert_eq!(
            lines[3],
            "FAIL ping g2 -> g1: g2 printed no result for 10.0.2.16 (it never printed 'net up:' \
             and did not finish)"
        );
    }

    #[test]
    fn spoofed_counts_are_read_per_guest_port() {
        let lines = [
            "switch: 4 port(s), 3/256 learned MAC(s)",
            "uplink   -                 rx 5/300B tx 2/120B flood 1 drop spoofed 9 runt 0",
            "guest 3  02:51:55:00:00:03 rx 12/840B tx 0/0B flood 0 drop spoofed 5 runt 1",
            "guest 13 02:51:55:00:00:0d rx 1/60B tx 0/0B flood 0 drop spoofed 77 runt 0",
            "guest 4  02:51:55:00:00:04 rx 1/60B tx 0/0B flood 0 drop spoofed 0 runt 0",
            // Later counters, all ports on one line.
            "switch: 4 port(s): guest 3 02:51:55:00:00:03 rx 20/1B drop spoofed 11 runt 1; \
             guest 4 02:51:55:00:00:04 rx 2/1B drop spoofed 0",
            "front-end 3 connected: MAC 02:51:55:00:00:03",
        ];
        assert_eq!(spoofed_count(lines, 3), Some(11));
        assert_eq!(spoofed_count(lines, 4), Some(0));
        assert_eq!(spoofed_count(lines, 13), Some(77));
        assert_eq!(spoofed_count(lines, 1), None);
        assert_eq!(spoofed_count(lines[..2].iter().copied(), 3), None);
    }

    #[test]
    fn other_drop_counters_and_closing_counts_are_read_per_guest() {
        let lines = [
            "guest 3  02:51:55:00:00:03 rx 9/1B drop spoofed 0 runt 0 spoofip 4 arpmac 2 \
             floodlim 0 queued 0/65536B",
            "guest 4  02:51:55:00:00:04 rx 9/1B drop spoofed 0 spoofip 0 floodlim 377",
            "front-end 4 closed: sent 3 frames (0 dropped), received 140, 12 not delivered \
             (no buffer), 7 short receive buffers returned, events 3 sent / 1 suppressed",
            "front-end 14 closed: sent 1 frames (0 dropped), received 1, 99 not delivered \
             (no buffer), 0 short receive buffers returned",
        ];
        assert_eq!(port_drop_count(lines, 3, "spoofip "), Some(4));
        assert_eq!(port_drop_count(lines, 3, "arpmac "), Some(2));
        assert_eq!(port_drop_count(lines, 4, "floodlim "), Some(377));
        assert_eq!(port_drop_count(lines, 5, "floodlim "), None);
        let nb = console::FRONT_END_NO_BUFFER;
        assert_eq!(front_end_closed_count(lines, 4, nb), Some(12));
        assert_eq!(front_end_closed_count(lines, 14, nb), Some(99));
        assert_eq!(
            front_end_closed_count(lines, 4, console::FRONT_END_SHORT_RX),
            Some(7)
        );
        assert_eq!(front_end_closed_count(lines, 3, nb), None);
    }
}
