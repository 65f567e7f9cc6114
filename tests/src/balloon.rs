//! The demo's balloon check (issue 16): from a topology's `balloon_give_mib` /
//! `balloon_take_mib` guests, or guests whose `balloon_schedule`'s first point is below or
//! above their RAM (givers and takers of the difference, printed when they reach that target),
//! and their console lines, one check named `balloon`:
//! `PASS balloon: moved 128 MiB guest1 -> guest2 in 75 ms, both still pinging`, where the time
//! is the givers' and the takers' own figures added up, and "still pinging" means every ping
//! check of every guest in the move passed (the move runs between their `net up` and their
//! pings, see `guest-frontend/src/apps/balloon.rs`).
//!
//! The console strings are defined here rather than in `console.rs`, which other work edits.

use shared_abi::balloon::{parse_schedule, SCHEDULE_KEY};
use shared_abi::layout::PAGE_SIZE;

use crate::qemu::Boot;
use crate::report::{kill_reason, ping_checks, Check};
use crate::topology::Topology;

/// A giver's line: `balloon gave 128 MiB in 35 ms`.
pub const GAVE: &str = "balloon gave ";
/// A taker's line: `balloon took 128 MiB in 40 ms`.
pub const TOOK: &str = "balloon took ";

/// The name of the check.
pub const CHECK: &str = "balloon";

/// One side of the move: a guest and the MiB its setting names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub vm: String,
    pub mib: u64,
}

/// The givers and takers a topology names (settings `balloon_give_mib` / `balloon_take_mib`
/// above zero, or a `balloon_schedule` whose first target is below / above the VM's RAM), in
/// topology order.
pub fn sides(topology: &Topology) -> (Vec<Side>, Vec<Side>) {
    let side = |key: &str, giving: bool| -> Vec<Side> {
        topology
            .vms
            .iter()
            .filter_map(|vm| {
                let mib = match vm.setting(key) {
                    Some(text) => text.trim().parse::<u64>().ok()?,
                    None => {
                        let first_mib = first_target_mib(vm.setting(SCHEDULE_KEY)?)?;
                        if giving {
                            vm.memory_mib.saturating_sub(first_mib)
                        } else {
                            first_mib.saturating_sub(vm.memory_mib)
                        }
                    }
                };
                (mib > 0).then(|| Side {
                    vm: vm.name.clone(),
                    mib,
                })
            })
            .collect()
    };
    (
        side("balloon_give_mib", true),
        side("balloon_take_mib", false),
    )
}

/// The first target of a `balloon_schedule`, in MiB.
fn first_target_mib(text: &str) -> Option<u64> {
    let schedule = parse_schedule(text).ok()?;
    let first = schedule.points().first()?;
    Some((first.pages * PAGE_SIZE) >> 20)
}

/// `(MiB, ms)` of a line whose text starts with `prefix` (`GAVE` or `TOOK`), as in
/// `balloon gave 128 MiB in 35 ms`; `None` for any other line.
pub fn parse_moved(line: &str, prefix: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix(prefix)?;
    let (mib, rest) = rest.split_once(" MiB in ")?;
    let ms = rest.strip_suffix(" ms")?;
    Some((mib.trim().parse().ok()?, ms.trim().parse().ok()?))
}

/// Why a guest has no line: killed, failed, or silent.
fn why_missing(boot: &Boot, vm: &str) -> String {
    if let Some(why) = kill_reason(boot, vm) {
        return format!("it was killed: {why}");
    }
    match boot.vm_lines(vm).find(|l| l.starts_with("REPORT ")) {
        Some(report) => format!("it ended with: {report}"),
        None => "it did not get that far".to_string(),
    }
}

/// Each side's printed figure: MiB and ms, or what went wrong.
fn figures(boot: &Boot, sides: &[Side], prefix: &str) -> Result<(u64, u64), String> {
    let (mut mib, mut ms) = (0, 0);
    for side in sides {
        let Some((got, took_ms)) = boot.vm_lines(&side.vm).find_map(|l| parse_moved(l, prefix))
        else {
            return Err(format!(
                "{} printed no '{}... MiB in ... ms' line ({})",
                side.vm,
                prefix.trim_end(),
                why_missing(boot, &side.vm)
            ));
        };
        if got != side.mib {
            return Err(format!(
                "{} printed '{prefix}{got} MiB' but its setting asks for {} MiB",
                side.vm, side.mib
            ));
        }
        mib += got;
        ms += took_ms;
    }
    Ok((mib, ms))
}

/// The `balloon` check of a boot, if the topology moves memory (none otherwise).
pub fn checks(topology: &Topology, boot: &Boot) -> Vec<Check> {
    let (givers, takers) = sides(topology);
    if givers.is_empty() && takers.is_empty() {
        return Vec::new();
    }
    vec![match check(topology, boot, &givers, &takers) {
        Ok(detail) => Check::new(CHECK, true, detail),
        Err(why) => Check::new(CHECK, false, why),
    }]
}

fn names(sides: &[Side]) -> String {
    if sides.is_empty() {
        return "nobody".to_string();
    }
    sides
        .iter()
        .map(|s| s.vm.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

fn check(
    topology: &Topology,
    boot: &Boot,
    givers: &[Side],
    takers: &[Side],
) -> Result<String, String> {
    let (_, give_ms) = figures(boot, givers, GAVE)?;
    let (moved, take_ms) = figures(boot, takers, TOOK)?;
    let movers: Vec<&str> = givers.iter().chain(takers).map(|s| s.vm.as_str()).collect();
    let pings: Vec<Check> = ping_checks(topology, boot)
        .into_iter()
        .filter(|c| {
            movers
                .iter()
                .any(|vm| c.name.starts_with(&format!("ping {vm} -> ")))
        })
        .collect();
    for vm in &movers {
        if !pings
            .iter()
            .any(|c| c.name.starts_with(&format!("ping {vm} -> ")))
        {
            return Err(format!(
                "{vm} took part in the move but pings nobody, so nothing shows it kept working"
            ));
        }
    }
    if let Some(failed) = pings.iter().find(|c| !c.pass) {
        return Err(format!(
            "moved {moved} MiB, but {} failed: {}",
            failed.name, failed.detail
        ));
    }
    Ok(format!(
        "moved {moved} MiB {} -> {} in {} ms, {} still pinging",
        names(givers),
        names(takers),
        give_ms + take_ms,
        if movers.len() == 2 { "both" } else { "all" }
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TOPOLOGY: &str = r#"
[machine]
cpus = 2
memory_mib = 1024

[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 16
vcpus = 1

[[vm]]
name = "guest1"
kind = "guest"
image = "guest-frontend"
memory_mib = 144
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.16/24", ping = "10.0.2.17", balloon_give_mib = 128 }

[[vm]]
name = "guest2"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.17/24", ping = "10.0.2.16", balloon_take_mib = 128 }
"#;

    fn topology(text: &str) -> Topology {
        Topology::from_toml_str(text).unwrap()
    }

    fn boot(lines: &[&str]) -> Boot {
        Boot {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            timed_out: false,
            stopped_early: false,
            exited: true,
            elapsed: Duration::from_secs(1),
        }
    }

    const GOOD: [&str; 4] = [
        "[guest1] balloon gave 128 MiB in 35 ms",
        "[guest2] balloon took 128 MiB in 40 ms",
        "[guest1] PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.1/0.2/0.3 ms",
        "[guest2] PING 10.0.2.16: 10/10 replies, rtt min/avg/max 0.1/0.2/0.3 ms",
    ];

    #[test]
    fn a_move_with_both_pinging_passes_with_the_summed_time() {
        let checks = checks(&topology(TOPOLOGY), &boot(&GOOD));
        assert_eq!(checks.len(), 1);
        assert_eq!(
            checks[0].summary_line(),
            "PASS balloon: moved 128 MiB guest1 -> guest2 in 75 ms, both still pinging"
        );
    }

    #[test]
    fn a_missing_line_fails_and_says_why() {
        let lines = [
            GOOD[0],
            "[hv] killing VM guest2: data abort at IPA 0x48000000",
            GOOD[2],
        ];
        let check = &checks(&topology(TOPOLOGY), &boot(&lines))[0];
        assert!(!check.pass);
        assert_eq!(
            check.detail,
            "guest2 printed no 'balloon took... MiB in ... ms' line (it was killed: data abort at \
             IPA 0x48000000)"
        );
        let lines = [GOOD[1], "[guest1] REPORT fail: balloon gave only 4 KiB"];
        let check = &checks(&topology(TOPOLOGY), &boot(&lines))[0];
        assert!(!check.pass);
        assert!(
            check
                .detail
                .contains("guest1 printed no 'balloon gave... MiB in ... ms' line (it ended with: REPORT fail"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_failed_ping_or_a_short_move_fails() {
        let mut lines = GOOD;
        lines[3] = "[guest2] PING 10.0.2.16: 3/10 replies, rtt min/avg/max 0.1/0.2/0.3 ms";
        let check = &checks(&topology(TOPOLOGY), &boot(&lines))[0];
        assert!(!check.pass);
        assert!(
            check
                .detail
                .starts_with("moved 128 MiB, but ping guest2 -> guest1 failed"),
            "{}",
            check.detail
        );
        let mut lines = GOOD;
        lines[1] = "[guest2] balloon took 64 MiB in 40 ms";
        let check = &checks(&topology(TOPOLOGY), &boot(&lines))[0];
        assert!(!check.pass);
        assert_eq!(
            check.detail,
            "guest2 printed 'balloon took 64 MiB' but its setting asks for 128 MiB"
        );
    }

    #[test]
    fn a_mover_that_pings_nobody_fails() {
        let text = TOPOLOGY.replace(", ping = \"10.0.2.16\"", "");
        let check = &checks(&topology(&text), &boot(&GOOD))[0];
        assert!(!check.pass);
        assert!(
            check.detail.starts_with("guest2 took part"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_topology_without_a_balloon_has_no_check() {
        let text = TOPOLOGY
            .replace(", balloon_give_mib = 128", "")
            .replace(", balloon_take_mib = 128", "");
        assert!(checks(&topology(&text), &boot(&GOOD)).is_empty());
        assert_eq!(sides(&topology(&text)), (vec![], vec![]));
    }

    #[test]
    fn schedules_name_givers_and_takers_by_their_first_target() {
        let text = TOPOLOGY
            .replace(
                "balloon_give_mib = 128",
                "balloon_schedule = \"1000:16,9000:144\"",
            )
            .replace("balloon_take_mib = 128", "balloon_schedule = \"1000:136\"");
        let (givers, takers) = sides(&topology(&text));
        assert_eq!(
            (givers, takers),
            (
                vec![Side {
                    vm: "guest1".into(),
                    mib: 128
                }],
                vec![Side {
                    vm: "guest2".into(),
                    mib: 128
                }]
            )
        );
        let checks = checks(&topology(&text), &boot(&GOOD));
        assert!(checks[0].pass, "{}", checks[0].detail);
    }

    #[test]
    fn moved_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_moved("balloon gave 128 MiB in 35 ms", GAVE),
            Some((128, 35))
        );
        assert_eq!(
            parse_moved("balloon took 2 MiB in 0 ms", TOOK),
            Some((2, 0))
        );
        for line in [
            "balloon took 128 MiB in 35 ms",
            "balloon gave 128 KiB in 35 ms",
            "balloon gave x MiB in 35 ms",
            "balloon gave 128 MiB in 35",
            "REPORT fail: balloon gave only 4 KiB of 128 MiB",
        ] {
            assert_eq!(parse_moved(line, GAVE), None, "{line}");
        }
    }
}
