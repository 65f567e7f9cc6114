//! Turning a boot's console into named checks: the `PASS <what>` / `FAIL <what>: <why>` summary
//! lines that `./run.sh` prints, and the same results as JSON for scripts.

use serde::Serialize;

use crate::qemu::Boot;
use crate::topology::Topology;

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
/// reported `REPORT ok`, nobody was killed, and the machine powered itself off at the end.
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
    checks
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
}
