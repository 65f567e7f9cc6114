//! sluice-bench: measures the para-virtual network and the primitives under it, several runs
//! each, and prints a table, `target/bench/results.json`, the scaling plot
//! `target/bench/scaling.svg` and the throughput-per-path plot `paths.svg` (next to the JSON). The scenarios and what each figure means are in
//! `sluice_harness::benchsuite`; every figure is the median over runs. Not a test: nothing here
//! asserts a speed. Exit status 0 only when every run of every scenario produced its figures.
//!
//! Usage: sluice-bench [--short] [--runs N] [--seconds N] [--pairs 1,2,4] [--rounds N]
//!                     [--only GROUP,...] [--json FILE] [--svg FILE]
//!        sluice-bench --profile [--profile-hz N] [--seconds N] [--only GROUP,...] [--json FILE]
//!
//! `--profile`: instead of measuring, boots each group (default `guest_to_guest`, one pair; see
//! `sluice_harness::profile::GROUPS`) once with the hypervisor's guest-PC sampling on
//! (`--profile-hz`, default 1000 per pCPU) and prints per VM the functions its samples fell in,
//! and the idle and hypervisor shares (JSON to `--json`, default `target/bench/profile.json`).
//!
//! `--short`: 1 run, 2-second iperf3 tests, scaling with 1 and 2 pairs (explicit options win).
//! `--only`: run only these scenario groups (`benchsuite::SCENARIO_GROUPS`, e.g.
//! `host_guest,passthrough`); the figures of the others are then missing, and the exit status
//! only says whether the chosen ones all worked. The `tap` group (`benchsuite::OPT_IN_GROUPS`:
//! root, /dev/net/tun, about two more minutes) runs only when `--only` names it.
//! Needs the host's iperf3 (`./run.sh setup` installs it) and the built images.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_harness::benchsuite::{Options, Suite, SCENARIO_GROUPS};
use sluice_harness::iperf::check_host_iperf3;
use sluice_harness::profile;
use sluice_harness::qemu::Artifacts;

const USAGE: &str = "usage: sluice-bench [--short] [--runs N] [--seconds N] [--pairs 1,2,4] \
                     [--rounds N] [--only GROUP,...] [--json FILE] [--svg FILE]\n       \
                     sluice-bench --profile [--profile-hz N] [--seconds N] [--only GROUP,...] \
                     [--json FILE]";

/// Default sampling rate of `--profile`, per pCPU.
const PROFILE_HZ: u32 = 1000;
/// Functions listed per VM by `--profile`.
const PROFILE_TOP: usize = 20;
/// iperf3 seconds of a `--profile` boot unless `--seconds` says otherwise.
const PROFILE_SECONDS: u32 = 10;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// The command line, before `--short` and the explicit options are merged.
#[derive(Default)]
struct Args {
    short: bool,
    runs: Option<usize>,
    seconds: Option<u32>,
    rounds: Option<u64>,
    pairs: Option<Vec<usize>>,
    only: Vec<String>,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    profile: bool,
    profile_hz: Option<u32>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{what} needs a value ({USAGE})"));
        let number = |what: &str, text: String| -> Result<u64, String> {
            text.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{what} needs a positive number, not '{text}'"))
        };
        match arg.as_str() {
            "--short" => out.short = true,
            "--runs" => out.runs = Some(number("--runs", value("--runs")?)? as usize),
            "--seconds" => {
                let n = number("--seconds", value("--seconds")?)?;
                out.seconds = Some(u32::try_from(n).map_err(|_| "--seconds is too large")?)
            }
            "--rounds" => out.rounds = Some(number("--rounds", value("--rounds")?)?),
            "--pairs" => {
                let text = value("--pairs")?;
                let pairs = text
                    .split(',')
                    .map(|p| match p.trim().parse::<usize>() {
                        Ok(n @ 1..=4) => Ok(n),
                        _ => Err(format!(
                            "--pairs takes pair counts from 1 to 4 (9 VMs at most), like 1,2,4; \
                             not '{text}'"
                        )),
                    })
                    .collect::<Result<Vec<usize>, String>>()?;
                out.pairs = Some(pairs);
            }
            "--only" => {
                let text = value("--only")?;
                out.only
                    .extend(text.split(',').map(|g| g.trim().to_string()));
            }
            "--json" => out.json = Some(PathBuf::from(value("--json")?)),
            "--svg" => out.svg = Some(PathBuf::from(value("--svg")?)),
            "--profile" => out.profile = true,
            "--profile-hz" => {
                let text = value("--profile-hz")?;
                let hz = text
                    .parse::<u64>()
                    .map_err(|_| format!("--profile-hz needs a number, not '{text}'"))?;
                out.profile_hz = Some(
                    shared_abi::profile::check_hz(hz).map_err(|e| format!("--profile-hz: {e}"))?,
                );
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}' ({USAGE})")),
        }
    }
    // Checked once every argument is in: --profile has groups of its own.
    let (known, what): (&[&str], &str) = if out.profile {
        (&profile::GROUPS, "profile groups")
    } else {
        (&SCENARIO_GROUPS, "scenario groups")
    };
    if let Some(group) = out.only.iter().find(|g| !known.contains(&g.as_str())) {
        return Err(format!(
            "--only takes {what} from {}; not '{group}'",
            known.join(",")
        ));
    }
    Ok(out)
}

fn options(args: &Args) -> Options {
    let mut options = if args.short {
        Options::short()
    } else {
        Options::full()
    };
    if let Some(runs) = args.runs {
        options.runs = runs;
    }
    if let Some(seconds) = args.seconds {
        options.seconds = seconds;
    }
    if let Some(rounds) = args.rounds {
        options.rounds = rounds;
    }
    if let Some(pairs) = &args.pairs {
        let mut pairs = pairs.clone();
        pairs.sort_unstable();
        pairs.dedup();
        options.pair_counts = pairs;
    }
    options.only = args.only.clone();
    options
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `--profile`: each group booted once with sampling on, its profile printed.
fn run_profile(args: &Args) -> Result<bool, String> {
    let artifacts = Artifacts::load()?;
    let hz = args.profile_hz.unwrap_or(PROFILE_HZ);
    let seconds = args.seconds.unwrap_or(PROFILE_SECONDS);
    let groups = if args.only.is_empty() {
        vec!["guest_to_guest".to_string()]
    } else {
        args.only.clone()
    };
    let mut all = serde_json::Map::new();
    for group in &groups {
        eprintln!(
            "profile: booting {group} with sampling at {hz} Hz per pCPU ({seconds} s of iperf3 \
             where there is a stream)"
        );
        let p = profile::run(group, hz, seconds, PROFILE_TOP, &artifacts)?;
        println!("\n== {group}");
        print!("{}", p.table());
        all.insert(
            group.clone(),
            serde_json::to_value(&p).map_err(|e| e.to_string())?,
        );
    }
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/profile.json"));
    let text =
        serde_json::to_string_pretty(&serde_json::Value::Object(all)).map_err(|e| e.to_string())?;
    write(&json_path, &text)?;
    println!("\nprofile written to {}", json_path.display());
    Ok(true)
}

fn run() -> Result<bool, String> {
    let started = std::time::Instant::now();
    let args = parse_args(std::env::args().skip(1))?;
    if args.profile {
        return run_profile(&args);
    }
    let options = options(&args);
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/results.json"));
    let out_dir = json_path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let svg_path = args
        .svg
        .clone()
        .unwrap_or_else(|| out_dir.join("scaling.svg"));
    let log_dir = out_dir.join("logs");
    let iperf3 = check_host_iperf3()?;
    let artifacts = Artifacts::load()?;
    eprintln!(
        "bench: {} run(s) per scenario, {} s iperf3 tests, scaling with {:?} pair(s); host {iperf3}",
        options.runs, options.seconds, options.pair_counts
    );
    let suite = Suite {
        artifacts: &artifacts,
        options: options.clone(),
        log_dir: Some(log_dir.clone()),
    };
    let results = suite.run();
    println!(
        "\nsluice bench{}: median of {} run(s) per figure; TCP, one stream, {} s per iperf3 test, \
         receiver's figure",
        if options.short { " (short)" } else { "" },
        options.runs,
        options.seconds
    );
    print!("{}", results.table());
    write(&json_path, &results.to_json())?;
    write(&svg_path, &results.scaling_svg())?;
    let paths_path = svg_path.with_file_name("paths.svg");
    write(&paths_path, &results.paths_svg())?;
    println!(
        "results written to {}, plots to {} and {} (boot consoles in {}); {:.0} s in all",
        json_path.display(),
        svg_path.display(),
        paths_path.display(),
        log_dir.display(),
        started.elapsed().as_secs_f64()
    );
    if !results.errors.is_empty() {
        println!("\n{} run(s) failed:", results.errors.len());
        for e in &results.errors {
            println!("- {e}");
        }
    }
    Ok(results.errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Result<Args, String> {
        parse_args(text.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_short_and_overrides() {
        let o = options(&args("").unwrap());
        assert_eq!(o, Options::full());
        assert_eq!(
            (o.runs, o.seconds, o.pair_counts.as_slice()),
            (5, 5, &[1, 2, 4][..])
        );
        let o = options(&args("--short").unwrap());
        assert_eq!((o.runs, o.seconds, o.short), (1, 2, true));
        assert_eq!(o.pair_counts, [1, 2]);
        // Explicit options win over --short, whatever the order.
        let o = options(&args("--runs 2 --short --pairs 4,1,4 --seconds 3 --rounds 10").unwrap());
        assert_eq!((o.runs, o.seconds, o.rounds), (2, 3, 10));
        assert_eq!(o.pair_counts, [1, 4]);
        let a = args("--json /tmp/x/r.json --svg /tmp/p.svg").unwrap();
        assert_eq!(a.json, Some(PathBuf::from("/tmp/x/r.json")));
        assert_eq!(a.svg, Some(PathBuf::from("/tmp/p.svg")));
        let o = options(&args("--short --only host_guest,passthrough").unwrap());
        assert_eq!(o.only, ["host_guest", "passthrough"]);
        assert!(o.runs_group("passthrough") && !o.runs_group("ping"));
        assert!(Options::short().runs_group("ping"));
        // The opt-in tap group: only when named.
        assert!(!Options::short().runs_group("tap"));
        let o = options(&args("--only passthrough,tap").unwrap());
        assert!(o.runs_group("tap") && !o.runs_group("host_guest"));
        let a = args("--only guest_to_host --profile --profile-hz 2000").unwrap();
        assert!(a.profile);
        assert_eq!(a.profile_hz, Some(2000));
        assert!(!args("").unwrap().profile);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (text, why) in [
            ("--runs", "needs a value"),
            ("--runs 0", "positive number"),
            ("--runs x", "positive number"),
            ("--pairs 1,8", "from 1 to 4"),
            ("--pairs", "needs a value"),
            ("--fast", "unknown argument '--fast'"),
            ("--only host_guest,nope", "not 'nope'"),
            ("--only host_to_guest", "scenario groups"),
            ("--profile --only host_guest", "profile groups"),
            ("--only", "needs a value"),
            ("--profile --profile-hz 50", "outside 100..=10000"),
            ("--profile-hz x", "needs a number"),
        ] {
            let e = args(text).err().unwrap_or_default();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
