//! sluice-run: boots a topology in QEMU, shows every VM's console live, then prints one summary
//! line per check and writes them as JSON. Exit status 0 only when every check passed.
//!
//! The checks are [`evaluate`]'s (boot, each VM's REPORT, isolation, shutdown, and one per ping
//! target of every guest with a `ping` setting) and the host's echoes through the NIC
//! ([`HostChecks`]: the driver domain that owns it, and each guest with `host_echo = true`).
//! A topology with `nic = "tap"` boots in a network namespace of its own ([`TapNet`]), where
//! the host also pings those VMs with the real `ping`; it needs root and /dev/net/tun.
//!
//! Usage: sluice-run --topology FILE [--json FILE] [--timeout SECONDS]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_harness::net::HostChecks;
use sluice_harness::qemu::{boot, Artifacts, BootOptions};
use sluice_harness::report::{evaluate, report};
use sluice_harness::tap::TapNet;
use sluice_harness::topology::Topology;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-run: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mut topology_path: Option<PathBuf> = None;
    let mut json_path: Option<PathBuf> = None;
    let mut timeout = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--topology" => topology_path = args.next().map(PathBuf::from),
            "--json" => json_path = args.next().map(PathBuf::from),
            "--timeout" => {
                let secs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--timeout needs a number of seconds")?;
                timeout = Duration::from_secs(secs);
            }
            other => {
                return Err(format!(
                "unknown argument '{other}' (usage: --topology FILE [--json FILE] [--timeout S])"
            ))
            }
        }
    }
    let topology_path = topology_path.ok_or("--topology FILE is required")?;
    let topology = Topology::from_file(&topology_path)
        .map_err(|e| format!("{}: {e}", topology_path.display()))?;
    let artifacts = Artifacts::load()?;
    // The tap option: the namespace the boot runs in, deleted when this function returns.
    let tap =
        TapNet::for_topology(&topology).map_err(|e| format!("{}: {e}", topology_path.display()))?;
    // With a NIC, the host checks echo services through it while the VMs boot.
    let host_checks = HostChecks::plan(&topology, tap.as_ref().map(TapNet::netns))
        .map_err(|e| format!("{}: {e}", topology_path.display()))?;
    println!(
        "Booting {} ({} VMs on {} pCPUs, {} MiB) in QEMU; hard timeout {} s",
        topology_path.display(),
        topology.vms.len(),
        topology.machine.cpus,
        topology.machine.memory_mib,
        timeout.as_secs()
    );
    if let Some(tap) = &tap {
        println!(
            "NIC host side: tap {} (10.0.2.2/24) in network namespace {}",
            tap.ifname(),
            tap.netns()
        );
    }
    println!("----------------------------------------------------------------------");
    let on_line = |line: &str| host_checks.on_line(line);
    let result = boot(
        &topology,
        &artifacts,
        &BootOptions {
            timeout,
            echo: true,
            host_forwards: host_checks.forwards(),
            tap: tap.as_ref(),
            on_line: Some(&on_line),
            ..BootOptions::default()
        },
    )?;
    println!("----------------------------------------------------------------------");
    let mut checks = evaluate(&topology, &result);
    checks.extend(host_checks.checks());
    for check in &checks {
        println!("{}", check.summary_line());
    }
    let name = topology_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let summary = report(&name, &topology, &result, checks);
    if let Some(path) = json_path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("results written to {}", path.display());
    }
    if !summary.pass {
        println!("Some checks failed: the console above shows what each VM did; rerun with ./run.sh --topology FILE to retry.");
    }
    Ok(summary.pass)
}
