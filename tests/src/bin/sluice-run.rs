//! sluice-run: boots a topology in QEMU, shows every VM's console live, then prints one summary
//! line per check and writes them as JSON. Exit status 0 only when every check passed.
//!
//! Usage: sluice-run --topology FILE [--json FILE] [--timeout SECONDS]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_harness::net::HostToDriverDomain;
use sluice_harness::qemu::{boot, Artifacts, BootOptions};
use sluice_harness::report::{evaluate, report, Check};
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
    println!(
        "Booting {} ({} VMs on {} pCPUs, {} MiB) in QEMU; hard timeout {} s",
        topology_path.display(),
        topology.vms.len(),
        topology.machine.cpus,
        topology.machine.memory_mib,
        timeout.as_secs()
    );
    println!("----------------------------------------------------------------------");
    // With a NIC, the host checks the driver domain's echo service through it while it boots.
    let host_check = topology.passthrough().map(|_| HostToDriverDomain::new());
    let on_line = |line: &str| {
        if let Some(check) = &host_check {
            check.on_line(line);
        }
    };
    let result = boot(
        &topology,
        &artifacts,
        &BootOptions {
            timeout,
            echo: true,
            host_forwards: host_check
                .as_ref()
                .map(|c| c.forwards())
                .unwrap_or_default(),
            on_line: Some(&on_line),
            ..BootOptions::default()
        },
    )?;
    println!("----------------------------------------------------------------------");
    let mut checks = evaluate(&topology, &result);
    if let (Some(check), Some((vm, _))) = (&host_check, topology.passthrough()) {
        let outcome = check.outcome();
        checks.push(Check::new(
            format!("host -> {}", vm.name),
            outcome.is_ok(),
            outcome.unwrap_or_else(|why| why),
        ));
    }
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
