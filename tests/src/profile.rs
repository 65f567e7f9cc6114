//! The guest-PC sampling profiler's host side (issue 11): parses the hypervisor's `profile`
//! lines (format in `shared_abi::profile`), symbolizes each VM's PCs against the ELF of its
//! image (`target/sluice/<image>.elf`, with its debug info: the function the PC is in and the
//! innermost function inlined there), and summarizes per VM the functions that got its samples,
//! with the idle loop's and the hypervisor's shares beside. `sluice-bench --profile` boots a
//! bench scenario with sampling on and prints this ([`run`]).
//!
//! Under TCG a sample's PC is the start of a translated block (QEMU takes interrupts between
//! blocks), so a function of long straight-line blocks is under-counted against one of many
//! short ones; the shares are a guide, not a cycle count. See docs/ARCHITECTURE.md,
//! "Profiling".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use shared_abi::profile::{FINAL_TAG, LINE_PREFIX};

use crate::benchsuite;
use crate::iperf::HostIperfs;
use crate::qemu::{self, Artifacts, BootOptions};
use crate::tap::TapNet;
use crate::topology::{NicBackend, Topology};

/// One PC of a VM and its samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcCount {
    pub pc: u64,
    pub el0: bool,
    pub n: u64,
}

/// One VM's samples in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmSamples {
    pub samples: u64,
    pub el0: u64,
    /// Samples whose PC found the hypervisor's histogram full (no PC kept).
    pub overflow: u64,
    /// Samples of the PC lines printed (the rest are in PCs past the top).
    pub shown: u64,
    pub pcs: Vec<PcCount>,
}

/// One print of the hypervisor's profile: the samples since the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tag: String,
    pub vms: BTreeMap<String, VmSamples>,
    pub hz: u64,
    pub pcpus: u64,
    pub idle: u64,
    /// Samples in a halted vCPU's halt poll (idle time spent spinning in EL2).
    pub poll: u64,
    pub hyp: u64,
    /// Samples taken after the pCPU had left EL2 and trapped again since they were due.
    pub late: u64,
    pub lost: u64,
    /// Sampling periods that passed without a sample.
    pub missed: u64,
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Vm {
        tag: String,
        vm: String,
        samples: u64,
        el0: u64,
        overflow: u64,
        shown: u64,
    },
    Pc {
        tag: String,
        vm: String,
        pc: PcCount,
    },
    /// The report's last line.
    Machine {
        tag: String,
        hz: u64,
        pcpus: u64,
        idle: u64,
        poll: u64,
        hyp: u64,
        late: u64,
        lost: u64,
        missed: u64,
    },
}

/// `key=value` words to a map; a word without `=` or a value that is not a number (hex with
/// `0x`) is an error.
fn fields<'a>(words: &[&'a str]) -> Result<BTreeMap<&'a str, u64>, String> {
    let mut out = BTreeMap::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("profile: '{w}' is not key=value"))?;
        let n = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        }
        .map_err(|_| format!("profile: {k}={v} is not a number"))?;
        out.insert(k, n);
    }
    Ok(out)
}

/// Parses a `[hv] profile ...` line; `None` for any other line (a VM's console cannot forge
/// one: its lines carry its own prefix), an error for a malformed profile line.
pub fn parse_line(line: &str) -> Option<Result<Line, String>> {
    let rest = line.strip_prefix("[hv] ")?.strip_prefix(LINE_PREFIX)?;
    let mut words = rest.split_whitespace();
    let tag = words.next()?.to_string();
    let words: Vec<&str> = words.collect();
    Some((|| {
        let get = |f: &BTreeMap<&str, u64>, k: &str| {
            f.get(k)
                .copied()
                .ok_or_else(|| format!("profile {tag}: no {k}= in '{line}'"))
        };
        match words.first().and_then(|w| w.strip_prefix("vm=")) {
            Some("") => Err(format!("profile {tag}: empty vm=")),
            Some(vm) => {
                let f = fields(&words[1..])?;
                if f.contains_key("pc") {
                    let el = get(&f, "el")?;
                    if el > 1 {
                        return Err(format!("profile {tag}: el={el}"));
                    }
                    Ok(Line::Pc {
                        tag: tag.clone(),
                        vm: vm.to_string(),
                        pc: PcCount {
                            pc: get(&f, "pc")?,
                            el0: el == 0,
                            n: get(&f, "n")?,
                        },
                    })
                } else {
                    Ok(Line::Vm {
                        tag: tag.clone(),
                        vm: vm.to_string(),
                        samples: get(&f, "samples")?,
                        el0: get(&f, "el0")?,
                        overflow: get(&f, "overflow")?,
                        shown: get(&f, "shown")?,
                    })
                }
            }
            None => {
                let f = fields(&words)?;
                Ok(Line::Machine {
                    tag: tag.clone(),
                    hz: get(&f, "hz")?,
                    pcpus: get(&f, "pcpus")?,
                    idle: get(&f, "idle")?,
                    poll: f.get("poll").copied().unwrap_or(0),
                    hyp: get(&f, "hyp")?,
                    late: f.get("late").copied().unwrap_or(0),
                    lost: get(&f, "lost")?,
                    missed: f.get("missed").copied().unwrap_or(0),
                })
            }
        }
    })())
}

/// Every complete report of a boot's console, in order (a report ends at its machine line; one
/// cut short by the end of the boot is dropped).
pub fn reports<'a>(lines: impl IntoIterator<Item = &'a String>) -> Result<Vec<Report>, String> {
    let mut done = Vec::new();
    let mut open: Option<Report> = None;
    for line in lines {
        let Some(parsed) = parse_line(line) else {
            continue;
        };
        let parsed = parsed?;
        let tag = match &parsed {
            Line::Vm { tag, .. } | Line::Pc { tag, .. } | Line::Machine { tag, .. } => tag,
        };
        if open.as_ref().is_some_and(|r| &r.tag != tag) {
            // Two reports interleaved or one cut short: keep the newer.
            open = None;
        }
        let report = open.get_or_insert_with(|| Report {
            tag: tag.clone(),
            ..Report::default()
        });
        match parsed {
            Line::Vm {
                vm,
                samples,
                el0,
                overflow,
                shown,
                ..
            } => {
                let v = report.vms.entry(vm).or_default();
                v.samples = samples;
                v.el0 = el0;
                v.overflow = overflow;
                v.shown = shown;
            }
            Line::Pc { vm, pc, .. } => report.vms.entry(vm).or_default().pcs.push(pc),
            Line::Machine {
                hz,
                pcpus,
                idle,
                poll,
                hyp,
                late,
                lost,
                missed,
                ..
            } => {
                report.missed = missed;
                report.hz = hz;
                report.pcpus = pcpus;
                report.idle = idle;
                report.poll = poll;
                report.hyp = hyp;
                report.late = late;
                report.lost = lost;
                done.extend(open.take());
            }
        }
    }
    Ok(done)
}

/// The reports that cover measurements: those with an odd numeric tag (the iperf app asks for
/// an accounting report, hence a profile print, tagged 2n before its test n and 2n+1 after, so
/// those cover the tests); if there are none, every report (the whole boot).
pub fn measurement_reports(reports: &[Report]) -> Vec<&Report> {
    let odd: Vec<&Report> = reports
        .iter()
        .filter(|r| r.tag.parse::<u64>().is_ok_and(|t| t % 2 == 1))
        .collect();
    if odd.is_empty() {
        reports.iter().collect()
    } else {
        odd
    }
}

/// Several reports summed (tag: theirs joined with `+`).
pub fn merge(reports: &[&Report]) -> Report {
    let mut out = Report {
        tag: reports
            .iter()
            .map(|r| r.tag.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        ..Report::default()
    };
    for r in reports {
        out.hz = r.hz;
        out.pcpus = r.pcpus;
        out.idle += r.idle;
        out.poll += r.poll;
        out.hyp += r.hyp;
        out.late += r.late;
        out.lost += r.lost;
        out.missed += r.missed;
        for (vm, s) in &r.vms {
            let o = out.vms.entry(vm.clone()).or_default();
            o.samples += s.samples;
            o.el0 += s.el0;
            o.overflow += s.overflow;
            o.shown += s.shown;
            for pc in &s.pcs {
                match o.pcs.iter_mut().find(|p| p.pc == pc.pc && p.el0 == pc.el0) {
                    Some(p) => p.n += pc.n,
                    None => o.pcs.push(pc.clone()),
                }
            }
        }
    }
    out
}

/// What a PC is in: the function whose code it is (the symbol), and the innermost function
/// inlined at it (from the debug info; the same when nothing is inlined there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub function: String,
    pub inlined: String,
}

/// Something that can name a PC.
pub trait Symbolize {
    fn place(&self, pc: u64) -> Option<Place>;
}

/// An ELF file's symbols and debug info.
pub struct ElfSymbols {
    loader: addr2line::Loader,
}

impl ElfSymbols {
    pub fn open(path: &Path) -> Result<ElfSymbols, String> {
        let loader = addr2line::Loader::new(path)
            .map_err(|e| format!("cannot read symbols of {}: {e}", path.display()))?;
        Ok(ElfSymbols { loader })
    }
}

/// A Rust symbol without its hash (`::h0123...`).
fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

impl Symbolize for ElfSymbols {
    fn place(&self, pc: u64) -> Option<Place> {
        // The debug info's frames, innermost first; the last is the function whose code it is.
        let mut innermost = None;
        let mut outermost = None;
        if let Ok(mut frames) = self.loader.find_frames(pc) {
            while let Ok(Some(frame)) = frames.next() {
                let Some(name) = frame.function.as_ref().and_then(|f| f.raw_name().ok()) else {
                    continue;
                };
                let name = demangle(&name);
                if innermost.is_none() {
                    innermost = Some(name.clone());
                }
                outermost = Some(name);
            }
        }
        // Without debug info, the symbol table (not an ELF mapping symbol such as `$x`).
        let function = outermost.or_else(|| {
            self.loader
                .find_symbol(pc)
                .filter(|name| !name.starts_with('$'))
                .map(demangle)
        })?;
        Some(Place {
            inlined: innermost.unwrap_or_else(|| function.clone()),
            function,
        })
    }
}

/// A function's samples and their share of its VM's samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionShare {
    pub function: String,
    pub samples: u64,
    pub share: f64,
}

/// Samples not attributed to a function: PCs past the printed top, a full histogram, or a PC
/// outside every symbol.
pub const OTHER: &str = "(other PCs)";

/// One VM's profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmProfile {
    pub vm: String,
    pub samples: u64,
    /// Its samples over all samples (every VM's, the idle loop's and the hypervisor's).
    pub share_of_pcpus: f64,
    pub el0_samples: u64,
    /// By the function the PC is in (inlined code counts as its caller's).
    pub functions: Vec<FunctionShare>,
    /// By the innermost function inlined at the PC.
    pub inlined: Vec<FunctionShare>,
}

/// A profile of one boot (or window of it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    pub window: String,
    pub hz: u64,
    pub pcpus: u64,
    pub samples: u64,
    pub idle_share: f64,
    /// Samples spinning in a halted vCPU's halt poll: idle time, spent in EL2.
    pub halt_poll_share: f64,
    /// Samples in the hypervisor otherwise (traps, switches).
    pub hypervisor_share: f64,
    /// Samples taken too late to say where the pCPU was (see [`Report::late`]).
    pub late_share: f64,
    /// Sampling periods with no sample, over the periods of the window (samples + missed).
    pub missed_share: f64,
    pub vms: Vec<VmProfile>,
}

fn ranked(counts: BTreeMap<String, u64>, of: u64, top: usize) -> Vec<FunctionShare> {
    let mut v: Vec<FunctionShare> = counts
        .into_iter()
        .map(|(function, samples)| FunctionShare {
            share: share(samples, of),
            function,
            samples,
        })
        .collect();
    v.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.function.cmp(&b.function))
    });
    v.truncate(top);
    v
}

fn share(part: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        part as f64 / of as f64
    }
}

/// Summarizes `report`: per VM its `top` functions by each ranking, symbolized by
/// `symbols(vm)` (a VM without symbols gets its PCs in hex).
pub fn summarize<'a>(
    report: &Report,
    symbols: impl Fn(&str) -> Option<&'a dyn Symbolize>,
    top: usize,
) -> Profile {
    let vm_total: u64 = report.vms.values().map(|v| v.samples).sum();
    let total = vm_total + report.idle + report.poll + report.hyp + report.late;
    let vms = report
        .vms
        .iter()
        .map(|(vm, s)| {
            let sym = symbols(vm);
            let mut functions: BTreeMap<String, u64> = BTreeMap::new();
            let mut inlined: BTreeMap<String, u64> = BTreeMap::new();
            let mut attributed = 0;
            for pc in &s.pcs {
                let el = if pc.el0 { " (EL0)" } else { "" };
                let place = sym.and_then(|sym| sym.place(pc.pc));
                let (f, i) = match place {
                    Some(p) => (format!("{}{el}", p.function), format!("{}{el}", p.inlined)),
                    None => {
                        let hex = format!("{:#x}{el}", pc.pc);
                        (hex.clone(), hex)
                    }
                };
                *functions.entry(f).or_default() += pc.n;
                *inlined.entry(i).or_default() += pc.n;
                attributed += pc.n;
            }
            let other = s.samples.saturating_sub(attributed);
            if other > 0 {
                *functions.entry(OTHER.to_string()).or_default() += other;
                *inlined.entry(OTHER.to_string()).or_default() += other;
            }
            VmProfile {
                vm: vm.clone(),
                samples: s.samples,
                share_of_pcpus: share(s.samples, total),
                el0_samples: s.el0,
                functions: ranked(functions, s.samples, top),
                inlined: ranked(inlined, s.samples, top),
            }
        })
        .collect();
    Profile {
        window: report.tag.clone(),
        hz: report.hz,
        pcpus: report.pcpus,
        samples: total,
        idle_share: share(report.idle, total),
        halt_poll_share: share(report.poll, total),
        hypervisor_share: share(report.hyp, total),
        late_share: share(report.late, total),
        missed_share: share(report.missed, total + report.missed),
        vms,
    }
}

impl Profile {
    /// The human-readable form: per VM its share of the pCPUs, then its functions.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:5.1} %", x * 100.0);
        let mut out = format!(
            "profile (window {}): {} samples at {} Hz on {} pCPUs; idle {}, halt polling {}, \
             hypervisor {}, taken too late to place {}; {} of the periods passed without a \
             sample (timer taken late)\n",
            self.window,
            self.samples,
            self.hz,
            self.pcpus,
            pct(self.idle_share).trim(),
            pct(self.halt_poll_share).trim(),
            pct(self.hypervisor_share).trim(),
            pct(self.late_share).trim(),
            pct(self.missed_share).trim()
        );
        for vm in &self.vms {
            let _ = writeln!(
                out,
                "\n{}: {} samples, {} of the pCPUs{}",
                vm.vm,
                vm.samples,
                pct(vm.share_of_pcpus).trim(),
                if vm.el0_samples > 0 {
                    format!(", {} at EL0", vm.el0_samples)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(out, "  by function (inlined code counted in its caller):");
            for f in &vm.functions {
                let _ = writeln!(out, "    {}  {:6}  {}", pct(f.share), f.samples, f.function);
            }
            let _ = writeln!(out, "  by innermost inlined function:");
            for f in &vm.inlined {
                let _ = writeln!(out, "    {}  {:6}  {}", pct(f.share), f.samples, f.function);
            }
        }
        out
    }
}

/// Where the ELF of image `image` is, next to its flat binary (`./run.sh build` copies it).
pub fn elf_path(artifacts: &Artifacts, image: &str) -> PathBuf {
    artifacts.dir.join(format!("{image}.elf"))
}

/// Opens the ELF of each VM's image (`None` for a VM whose ELF is missing or unreadable, with
/// a note on stderr).
pub fn symbols_for(topology: &Topology, artifacts: &Artifacts) -> BTreeMap<String, ElfSymbols> {
    let mut told = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for vm in &topology.vms {
        let path = elf_path(artifacts, &vm.image);
        match ElfSymbols::open(&path) {
            Ok(s) => {
                out.insert(vm.name.clone(), s);
            }
            Err(e) => {
                if told.insert(vm.image.clone()) {
                    eprintln!("profile: {e} (its PCs stay in hex)");
                }
            }
        }
    }
    out
}

/// The bench groups `sluice-bench --profile` can boot, and their topologies (`seconds` of
/// iperf3 where there is a stream). The iperf app asks for accounting around its test, so
/// the profile of the test itself is printed apart from the boot's. `host_to_guest` and
/// `guest_to_host` boot the `host_guest` scenario (the host's iperf3 against a guest's server
/// through the driver domain's NIC) and keep the window of that direction's test;
/// `host_to_driver_domain` boots the `passthrough` scenario (the host's iperf3 against the
/// driver domain's own server). The `_tap` groups are the same with the NIC on a tap device,
/// the host's client in its namespace (root and /dev/net/tun).
pub const GROUPS: [&str; 10] = [
    "guest_to_guest",
    "guest_to_guest_64k",
    "host_to_guest",
    "guest_to_host",
    "host_to_driver_domain",
    "host_to_guest_tap",
    "guest_to_host_tap",
    "host_to_driver_domain_tap",
    "ping",
    "evtchn",
];

/// How [`run`] boots a group and which of its reports it keeps.
struct GroupPlan {
    topology: String,
    /// The host runs iperf3 against the guest's server (`host_iperf`).
    host_client: bool,
    /// The NIC is on a tap device: the boot and the host's client run in its namespace.
    tap: bool,
    /// The one report to keep (the window of that test), or `None`: every test's.
    window: Option<String>,
}

fn group_plan(group: &str, seconds: u32) -> Option<GroupPlan> {
    // The bench's pair topologies name the setting for every client: pair 1's is turned on.
    let with_accounting =
        |t: String| t.replacen("iperf_accounting = false", "iperf_accounting = true", 1);
    // The host_guest guest serves the host's tests in order: test 1 host -> guest, test 2
    // (-R) guest -> host; the report after test n is tagged 2n + 1.
    let host_test = |nic: NicBackend, test: u32| GroupPlan {
        tap: nic == NicBackend::Tap,
        topology: benchsuite::host_topology_on(nic, seconds),
        host_client: true,
        window: Some((2 * test + 1).to_string()),
    };
    // The driver domain's own server, the host sending: its test 1.
    let passthrough = |nic: NicBackend| GroupPlan {
        tap: nic == NicBackend::Tap,
        topology: benchsuite::passthrough_topology_on(nic, seconds),
        host_client: true,
        window: Some("3".into()),
    };
    let plain = |topology: String| GroupPlan {
        topology,
        host_client: false,
        tap: false,
        window: None,
    };
    Some(match group {
        "guest_to_guest" => plain(with_accounting(benchsuite::pairs_topology(
            1, seconds, false,
        ))),
        "guest_to_guest_64k" => plain(with_accounting(benchsuite::pairs_topology_mtu(
            1,
            seconds,
            false,
            Some(benchsuite::LARGE_FRAME_MTU),
        ))),
        "host_to_guest" => host_test(NicBackend::User, 1),
        "guest_to_host" => host_test(NicBackend::User, 2),
        "host_to_driver_domain" => passthrough(NicBackend::User),
        "host_to_guest_tap" => host_test(NicBackend::Tap, 1),
        "guest_to_host_tap" => host_test(NicBackend::Tap, 2),
        "host_to_driver_domain_tap" => passthrough(NicBackend::Tap),
        "ping" => plain(benchsuite::ping_topology()),
        "evtchn" => plain(benchsuite::evtchn_topology(20_000)),
        _ => return None,
    })
}

/// `toml` with sampling on at `hz`.
pub fn with_profiling(toml: &str, hz: u32) -> String {
    toml.replacen(
        "[machine]\n",
        &format!("[machine]\n{} = {hz}\n", shared_abi::profile::KEY),
        1,
    )
}

/// Boots bench group `group` with sampling at `hz`, and returns its profile (the tests' windows
/// if it has tests, else the whole boot) with each VM's `top` functions.
pub fn run(
    group: &str,
    hz: u32,
    seconds: u32,
    top: usize,
    artifacts: &Artifacts,
) -> Result<Profile, String> {
    let plan = group_plan(group, seconds).ok_or_else(|| {
        format!(
            "--profile knows the groups {}; not '{group}'",
            GROUPS.join(",")
        )
    })?;
    let topology = Topology::from_toml_str(&with_profiling(&plan.topology, hz))
        .map_err(|e| format!("the {group} topology: {e}"))?;
    let tap = if plan.tap {
        Some(TapNet::create()?)
    } else {
        None
    };
    let host = if plan.host_client {
        Some(HostIperfs::plan_in(
            &topology,
            seconds,
            tap.as_ref().map(TapNet::netns),
        )?)
    } else {
        None
    };
    let final_line = format!("[hv] {LINE_PREFIX}{FINAL_TAG} hz=");
    // A report ends with its machine line; the boot can stop at the window's.
    let window_line = plan
        .window
        .as_ref()
        .map(|tag| format!("[hv] {LINE_PREFIX}{tag} hz="));
    let stop = |line: &str| {
        line.starts_with(&final_line) || window_line.as_ref().is_some_and(|w| line.starts_with(w))
    };
    let on_line = |line: &str| {
        if let Some(host) = &host {
            host.on_line(line);
        }
    };
    let options = BootOptions {
        timeout: Duration::from_secs(2 * u64::from(seconds) + 120),
        stop_when: Some(&stop),
        on_line: Some(&on_line),
        host_forwards: host.as_ref().map(HostIperfs::forwards).unwrap_or_default(),
        tap: tap.as_ref(),
        ..BootOptions::default()
    };
    let boot = qemu::boot(&topology, artifacts, &options)?;
    let all = reports(&boot.lines)?;
    let chosen: Vec<&Report> = match &plan.window {
        Some(tag) => all.iter().filter(|r| &r.tag == tag).collect(),
        None => measurement_reports(&all),
    };
    if chosen.is_empty() {
        let tail = boot.lines.len().saturating_sub(15);
        return Err(format!(
            "the {group} boot printed no profile{} (timed out: {}); its last lines:\n{}",
            plan.window
                .as_ref()
                .map(|t| format!(" tagged {t}"))
                .unwrap_or_default(),
            boot.timed_out,
            boot.lines[tail..].join("\n")
        ));
    }
    let window = merge(&chosen);
    let symbols = symbols_for(&topology, artifacts);
    Ok(summarize(
        &window,
        |vm| symbols.get(vm).map(|s| s as &dyn Symbolize),
        top,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    const TWO: &str = "\
[hv] profile 0 vm=a samples=5 el0=0 overflow=0 shown=5
[hv] profile 0 vm=a pc=0x40000100 el=1 n=5
[hv] profile 0 hz=1000 pcpus=2 idle=10 poll=4 hyp=1 late=5 lost=0
[a] profile 0 vm=a samples=999 el0=0 overflow=0 shown=0
[hv] profile 1 vm=a samples=7 el0=1 overflow=1 shown=6
[hv] profile 1 vm=a pc=0x40000100 el=1 n=4
[hv] profile 1 vm=a pc=0x40000200 el=0 n=1
[hv] profile 1 vm=a pc=0x40000300 el=1 n=1
[hv] profile 1 vm=b samples=2 el0=0 overflow=0 shown=2
[hv] profile 1 vm=b pc=0x40000100 el=1 n=2
[hv] profile 1 hz=1000 pcpus=2 idle=1 hyp=0 lost=0 missed=10
[hv] profile final vm=a samples=1 el0=0 overflow=0 shown=1
";

    #[test]
    fn reports_are_parsed_and_a_vm_cannot_forge_one() {
        let all = reports(&lines(TWO)).unwrap();
        // The VM's line is ignored; the final report has no machine line yet: dropped.
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].tag, "0");
        assert_eq!(all[0].vms["a"].samples, 5);
        assert_eq!(
            (all[0].idle, all[0].poll, all[0].hyp, all[0].late),
            (10, 4, 1, 5)
        );
        assert_eq!(all[1].poll, 0, "a line without poll= counts none");
        assert_eq!(all[1].late, 0, "a line without late= counts none");
        let r = &all[1];
        assert_eq!(r.vms["a"].overflow, 1);
        assert_eq!(
            r.vms["a"].pcs[1],
            PcCount {
                pc: 0x4000_0200,
                el0: true,
                n: 1
            }
        );
        assert_eq!(r.vms["b"].shown, 2);
        // Test windows: the odd tags.
        let m = measurement_reports(&all);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].tag, "1");
        // Without odd tags: everything.
        assert_eq!(measurement_reports(&all[..1]).len(), 1);
    }

    #[test]
    fn malformed_profile_lines_are_errors() {
        for bad in [
            "[hv] profile 1 vm= samples=1 el0=0 overflow=0 shown=0",
            "[hv] profile 1 vm=a samples=x el0=0 overflow=0 shown=0",
            "[hv] profile 1 vm=a samples=1 el0=0 overflow=0",
            "[hv] profile 1 vm=a pc=0x10 el=2 n=1",
            "[hv] profile 1 vm=a pc=0xzz el=1 n=1",
            "[hv] profile 1 hz=1000 pcpus=2 idle=1",
            "[hv] profile 1 hz=1000 nonsense",
        ] {
            assert!(parse_line(bad).unwrap().is_err(), "{bad}");
        }
        assert!(parse_line("[hv] accounting 1 idle_us=1 pcpus=2").is_none());
        assert!(parse_line("[hv] profile").is_none());
    }

    #[test]
    fn merged_reports_add_up() {
        let all = reports(&lines(TWO)).unwrap();
        let m = merge(&[&all[0], &all[1]]);
        assert_eq!(m.tag, "0+1");
        assert_eq!(m.vms["a"].samples, 12);
        assert_eq!(m.vms["a"].pcs[0].n, 9);
        assert_eq!(m.vms["a"].pcs.len(), 3);
        assert_eq!(m.idle, 11);
        assert_eq!(m.missed, 10);
    }

    struct Fake;
    impl Symbolize for Fake {
        fn place(&self, pc: u64) -> Option<Place> {
            match pc {
                0x4000_0100 => Some(Place {
                    function: "app::poll".into(),
                    inlined: "smoltcp::tcp::process".into(),
                }),
                0x4000_0200 => Some(Place {
                    function: "app::poll".into(),
                    inlined: "app::poll".into(),
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn summaries_share_each_vms_samples_among_its_functions() {
        let all = reports(&lines(TWO)).unwrap();
        let fake = Fake;
        let p = summarize(
            &all[1],
            |vm| (vm == "a").then_some(&fake as &dyn Symbolize),
            10,
        );
        assert_eq!(p.samples, 10);
        assert_eq!(p.idle_share, 0.1);
        assert_eq!(p.missed_share, 0.5);
        // The halt poll's samples and the late ones count among the pCPUs' time, apart from
        // the hypervisor's.
        let first = summarize(&all[0], |_| None, 10);
        assert_eq!(first.samples, 25);
        assert_eq!(
            (
                first.idle_share,
                first.halt_poll_share,
                first.hypervisor_share,
                first.late_share
            ),
            (0.4, 0.16, 0.04, 0.2)
        );
        assert!(first.table().contains(
            "idle 40.0 %, halt polling 16.0 %, hypervisor 4.0 %, taken too late to place 20.0 %"
        ));
        let a = &p.vms[0];
        assert_eq!(a.vm, "a");
        assert_eq!(a.share_of_pcpus, 0.7);
        let names: Vec<(&str, u64)> = a
            .functions
            .iter()
            .map(|f| (f.function.as_str(), f.samples))
            .collect();
        // 4 + the EL0 one apart; the unsymbolized PC in hex; the overflow as other.
        assert_eq!(
            names,
            [
                ("app::poll", 4),
                ("(other PCs)", 1),
                ("0x40000300", 1),
                ("app::poll (EL0)", 1)
            ]
        );
        assert_eq!(a.inlined[0].function, "smoltcp::tcp::process");
        assert!((a.functions[0].share - 4.0 / 7.0).abs() < 1e-9);
        // A VM without symbols keeps its PCs in hex.
        assert_eq!(p.vms[1].functions[0].function, "0x40000100");
        let table = p.table();
        assert!(
            table.contains("a: 7 samples, 70.0 % of the pCPUs, 1 at EL0"),
            "{table}"
        );
        assert!(table.contains(" 57.1 %       4  app::poll"), "{table}");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["vms"][0]["functions"][0]["samples"], 4);
    }

    #[test]
    fn the_profiled_topologies_parse_and_ask_for_accounting_around_the_test() {
        for group in GROUPS {
            let toml = with_profiling(&group_plan(group, 10).unwrap().topology, 1000);
            let t = Topology::from_toml_str(&toml).unwrap_or_else(|e| panic!("{group}: {e}"));
            assert_eq!(t.machine.profile_hz, Some(1000), "{group}");
            if group.starts_with("guest_to_guest") {
                assert_eq!(toml.matches("iperf_accounting = true").count(), 1, "{toml}");
            }
        }
        assert!(group_plan("nope", 1).is_none());
        // The host groups boot the bench's host_guest scenario and keep one test's window:
        // the report after test n is tagged 2n + 1 (host -> guest first, then -R).
        for (group, tag) in [
            ("host_to_guest", "3"),
            ("guest_to_host", "5"),
            ("host_to_guest_tap", "3"),
            ("guest_to_host_tap", "5"),
            ("host_to_driver_domain", "3"),
            ("host_to_driver_domain_tap", "3"),
        ] {
            let plan = group_plan(group, 10).unwrap();
            assert!(plan.host_client, "{group}");
            assert_eq!(plan.tap, group.ends_with("_tap"), "{group}");
            assert_eq!(
                plan.topology.contains("nic = \"tap\""),
                plan.tap,
                "{}",
                plan.topology
            );
            assert_eq!(plan.window.as_deref(), Some(tag), "{group}");
            assert!(
                plan.topology.contains("host_iperf = true")
                    || plan.topology.contains("host_iperf = \"send\""),
                "{}",
                plan.topology
            );
            assert!(
                plan.topology.contains("iperf_accounting = true"),
                "{}",
                plan.topology
            );
        }
        assert!(GROUPS
            .iter()
            .filter(|g| !g.contains("host"))
            .all(|g| group_plan(g, 10).is_some_and(|p| !p.host_client && p.window.is_none())));
    }
}
