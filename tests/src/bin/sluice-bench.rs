//! sluice-bench: measures what can be measured so far, several runs each, and prints a table and
//! `target/bench/results.json`. Figures come from `BENCH` lines the VMs print (timed with the
//! virtual counter inside the guest); the value reported is the median over runs of each run's
//! median. Not a test: nothing here asserts a speed.
//!
//! Usage: sluice-bench [--runs N] [--rounds N] [--json FILE]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use sluice_harness::bench::{collect, combine, table, Sample};
use sluice_harness::qemu::{boot, Artifacts, BootOptions};
use sluice_harness::topology::Topology;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The scenarios: a name and a topology. `{rounds}` is replaced by the rounds per run.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "evtchn ping-pong (guest <-> driver domain)",
        r#"[machine]
cpus = 2
memory_mib = 512
[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 8
vcpus = 1
[[vm]]
name = "pinger"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "pingpong", rounds = {rounds} }
"#,
    ),
    (
        "grant map/unmap/copy (guest <-> guest)",
        r#"[machine]
cpus = 2
memory_mib = 512
[[vm]]
name = "granter"
kind = "guest"
image = "guest-frontend"
memory_mib = 4
vcpus = 1
settings = { app = "granter", peer = 2, other = 2 }
[[vm]]
name = "mapper"
kind = "guest"
image = "guest-frontend"
memory_mib = 4
vcpus = 1
settings = { app = "attack", peer = 1, mode = "bench", rounds = {rounds} }
"#,
    ),
];

fn run() -> Result<(), String> {
    let mut runs = 3usize;
    let mut rounds = 2_000u64;
    let mut json_path = PathBuf::from("target/bench/results.json");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            args.next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{what} needs a number"))
        };
        match arg.as_str() {
            "--runs" => runs = number("--runs")?.max(1) as usize,
            "--rounds" => rounds = number("--rounds")?.max(1),
            "--json" => {
                json_path = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--json needs a file")?
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}' (usage: [--runs N] [--rounds N] [--json FILE])"
                ))
            }
        }
    }
    let artifacts = Artifacts::load()?;
    let mut samples: Vec<Sample> = Vec::new();
    for (name, template) in SCENARIOS {
        let toml = template.replace("{rounds}", &rounds.to_string());
        let topology = Topology::from_toml_str(&toml).map_err(|e| format!("{name}: {e}"))?;
        for run in 1..=runs {
            eprintln!("[bench] {name}: run {run}/{runs} ({rounds} rounds) ...");
            let result = boot(
                &topology,
                &artifacts,
                &BootOptions {
                    timeout: Duration::from_secs(300),
                    ..BootOptions::default()
                },
            )?;
            let found = collect(&result.lines)?;
            let failed: Vec<&String> = result
                .lines
                .iter()
                .filter(|l| l.contains("REPORT fail"))
                .collect();
            if found.is_empty() || !failed.is_empty() {
                return Err(format!(
                    "{name}: run {run} produced no figures or failed:\n{}",
                    result.lines.join("\n")
                ));
            }
            samples.extend(found);
        }
    }
    let figures = combine(&samples);
    println!("\nsluice bench: {runs} run(s) per scenario, {rounds} rounds per run; counter ticks");
    print!("{}", table(&figures));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let by_name: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|f| (f.name.clone(), serde_json::to_value(f).expect("plain data")))
        .collect();
    let doc = json!({
        "runs": runs,
        "rounds_per_run": rounds,
        "evtchn_roundtrip_us": figures.iter().find(|f| f.name == "evtchn_roundtrip_ticks").map(|f| f.median_us),
        "figures": by_name,
    });
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).expect("json"),
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;
    println!("results written to {}", json_path.display());
    Ok(())
}
