//! Benchmark figures: parsing the `BENCH <name> min=.. median=.. max=.. n=.. freq_hz=..
//! [unit=..]` lines VMs print and the per-reply ping lines, combining several runs (the median of
//! the per-run medians), and the [`Stat`] every figure of `./run.sh bench` is reported as.
//! Measuring is the VMs' job (and the host's iperf3, see [`crate::iperf`]); this module only
//! reads and combines.
//!
//! A `BENCH` line's values are in counter ticks unless it says `unit=mbit_per_s` (a rate, e.g.
//! the `memcpy` app's `BENCH memcpy_mbps ... freq_hz=0 unit=mbit_per_s`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::console;

/// What the numbers of a `BENCH` line count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Virtual counter ticks (a duration; `freq_hz` converts it to microseconds).
    Ticks,
    /// A rate in Mbit/s (10^6 bits per second, as iperf counts).
    MbitPerS,
}

impl Unit {
    /// The `unit=` value: absent means ticks.
    pub fn parse(text: Option<&str>) -> Result<Unit, String> {
        match text {
            None | Some("ticks") => Ok(Unit::Ticks),
            Some("mbit_per_s") => Ok(Unit::MbitPerS),
            Some(other) => Err(format!("unit={other} is not one of ticks, mbit_per_s")),
        }
    }
}

/// One `BENCH` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub vm: String,
    pub name: String,
    pub min: u64,
    pub median: u64,
    pub max: u64,
    pub n: u64,
    /// The counter frequency for tick figures; 0 for rates.
    pub freq_hz: u64,
    pub unit: Unit,
}

/// Parses a console line `[vm] BENCH name k=v ...`; `None` for any other line. Unknown keys
/// are ignored; a `BENCH` line missing a required key, with a non-numeric value or an unknown
/// `unit=` is an error.
pub fn parse_line(line: &str) -> Option<Result<Sample, String>> {
    let rest = line.strip_prefix('[')?;
    let (vm, rest) = rest.split_once("] ")?;
    let rest = rest.strip_prefix("BENCH ")?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let mut values = BTreeMap::new();
    for word in words {
        if let Some((k, v)) = word.split_once('=') {
            values.insert(k, v);
        }
    }
    let get = |key: &str| -> Result<u64, String> {
        let raw = values
            .get(key)
            .ok_or_else(|| format!("BENCH {name} from {vm}: no {key}="))?;
        raw.parse()
            .map_err(|_| format!("BENCH {name} from {vm}: {key}={raw} is not a number"))
    };
    Some((|| {
        Ok(Sample {
            vm: vm.to_string(),
            name: name.clone(),
            min: get("min")?,
            median: get("median")?,
            max: get("max")?,
            n: get("n")?,
            freq_hz: get("freq_hz")?,
            unit: Unit::parse(values.get("unit").copied())
                .map_err(|e| format!("BENCH {name} from {vm}: {e}"))?,
        })
    })())
}

/// Every `BENCH` sample of a boot's console.
pub fn collect<'a>(lines: impl IntoIterator<Item = &'a String>) -> Result<Vec<Sample>, String> {
    lines.into_iter().filter_map(|l| parse_line(l)).collect()
}

/// One `BENCH` figure over several runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: Unit,
    /// Median over runs of each run's median, in `unit`.
    pub median: u64,
    /// The smallest and largest single measurement of any run.
    pub min: u64,
    pub max: u64,
    /// Each run's median, in run order.
    pub run_medians: Vec<u64>,
    /// Counter frequency of tick figures (0 for rates).
    pub freq_hz: u64,
    /// Tick figures: the median in microseconds (`None` for rates or an unknown frequency).
    pub median_us: Option<f64>,
    pub runs: usize,
    pub samples_per_run: u64,
}

impl Figure {
    /// The figure as a [`Stat`] in its natural unit: microseconds for ticks (`None` without a
    /// counter frequency), Mbit/s for rates.
    pub fn stat(&self) -> Option<Stat> {
        let scale = match self.unit {
            Unit::MbitPerS => 1.0,
            Unit::Ticks if self.freq_hz == 0 => return None,
            Unit::Ticks => 1e6 / self.freq_hz as f64,
        };
        let values: Vec<f64> = self.run_medians.iter().map(|&v| v as f64 * scale).collect();
        let mut stat = Stat::of_runs(&values)?;
        stat.min = round_to(self.min as f64 * scale, 3);
        stat.max = round_to(self.max as f64 * scale, 3);
        stat.samples = Some(self.samples_per_run * self.runs as u64);
        Some(stat)
    }
}

fn median_u64(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Combines runs: per name, the median of the run medians, the overall min and max.
pub fn combine(samples: &[Sample]) -> Vec<Figure> {
    let mut by_name: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_name.entry(&s.name).or_default().push(s);
    }
    by_name
        .into_iter()
        .map(|(name, runs)| {
            let run_medians: Vec<u64> = runs.iter().map(|s| s.median).collect();
            let median = median_u64(&mut run_medians.clone());
            let unit = runs[0].unit;
            let freq = runs.iter().map(|s| s.freq_hz).max().unwrap_or(0);
            Figure {
                name: name.to_string(),
                unit,
                median,
                min: runs.iter().map(|s| s.min).min().unwrap_or(0),
                max: runs.iter().map(|s| s.max).max().unwrap_or(0),
                run_medians,
                freq_hz: freq,
                median_us: (unit == Unit::Ticks && freq != 0)
                    .then(|| median as f64 * 1e6 / freq as f64),
                runs: runs.len(),
                samples_per_run: runs.iter().map(|s| s.n).min().unwrap_or(0),
            }
        })
        .collect()
}

/// The raw `BENCH` figures as a table (ticks or Mbit/s, as the VMs printed them).
pub fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<28} {:>12} {:>10} {:>10} {:<10} {:>12} {:>5} {:>8}\n",
        "figure", "median", "min", "max", "unit", "median us", "runs", "n/run"
    );
    for f in figures {
        let us = f
            .median_us
            .map(|us| format!("{us:.2}"))
            .unwrap_or_else(|| "-".into());
        let unit = match f.unit {
            Unit::Ticks => "ticks",
            Unit::MbitPerS => "Mbit/s",
        };
        out.push_str(&format!(
            "{:<28} {:>12} {:>10} {:>10} {:<10} {:>12} {:>5} {:>8}\n",
            f.name, f.median, f.min, f.max, unit, us, f.runs, f.samples_per_run
        ));
    }
    out
}

/// One figure of `./run.sh bench` over several runs, in the unit its JSON key names.
///
/// `median` is the median of `values` (one value per run: a run's result, or a run's median
/// when a run measures many samples); `min` and `max` are the extremes of everything measured
/// (the single samples inside runs where there are any, else the run values).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Runs that produced a value.
    pub runs: usize,
    /// Each run's value, in run order.
    pub values: Vec<f64>,
    /// Single measurements behind the figure, when a run has more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// The largest run value is more than twice the smallest (see [`spread_over_2x`]): the
    /// figure is flagged in the table.
    pub spread_over_2x: bool,
}

/// The flag rule: over more than one run, the largest run value (a run's result, or a
/// run's median) over the smallest exceeds 2. Run values, not single samples: one slow
/// event-channel round trip among thousands is no unsteady figure, a run twice as fast as
/// another is.
pub fn spread_over_2x(values: &[f64]) -> bool {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values.len() > 1 && min > 0.0 && max / min > 2.0
}

/// `x` rounded to `decimals` places (what the JSON shows: no float noise like 95.89000000000001).
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl Stat {
    /// Median, min and max of one value per run; `None` for no runs. Values are rounded to
    /// three decimals.
    pub fn of_runs(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let values: Vec<f64> = values.iter().map(|&v| round_to(v, 3)).collect();
        Some(Stat {
            median: round_to(median(&values), 3),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs: values.len(),
            spread_over_2x: spread_over_2x(&values),
            values,
            samples: None,
        })
    }

    /// Runs that each measured many samples: the median of the run medians, the extremes of all
    /// samples. Runs without samples are left out; `None` if no run has any.
    pub fn of_sampled_runs(runs: &[Vec<f64>]) -> Option<Stat> {
        let runs: Vec<&Vec<f64>> = runs.iter().filter(|r| !r.is_empty()).collect();
        let medians: Vec<f64> = runs.iter().map(|r| median(r)).collect();
        let mut stat = Stat::of_runs(&medians)?;
        let all = runs.iter().flat_map(|r| r.iter().copied());
        stat.min = round_to(all.clone().fold(f64::INFINITY, f64::min), 3);
        stat.max = round_to(all.fold(f64::NEG_INFINITY, f64::max), 3);
        stat.samples = Some(runs.iter().map(|r| r.len() as u64).sum());
        Some(stat)
    }
}

/// The median of `values` (the mean of the two middle ones for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One answered ping as a `net` guest prints it: `ping 10.0.2.17: seq 3 rtt 0.532 ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct PingReply {
    pub target: String,
    pub seq: u32,
    pub rtt_us: f64,
}

/// Parses a per-reply ping line ([`console::PING_REPLY`]), with or without the `[vm] ` prefix;
/// `None` for anything else (summaries, `seq 5 not sent`, `no answer ...`).
pub fn parse_ping_reply(line: &str) -> Option<PingReply> {
    let text = match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ")?.1,
        None => line,
    };
    let rest = text.strip_prefix(console::PING_REPLY)?;
    let (target, rest) = rest.split_once(": ")?;
    let mut words = rest.split_whitespace();
    if words.next()? != "seq" {
        return None;
    }
    let seq = words.next()?.parse().ok()?;
    if words.next()? != "rtt" {
        return None;
    }
    let value: f64 = words.next()?.parse().ok()?;
    let scale = match words.next()? {
        "ms" => 1e3,
        "us" | "µs" => 1.0,
        "s" => 1e6,
        _ => return None,
    };
    (value.is_finite() && value >= 0.0 && !target.contains(char::is_whitespace)).then(|| {
        PingReply {
            target: target.to_string(),
            seq,
            rtt_us: value * scale,
        }
    })
}

// ---- The reasons beside the figures ------------------------------------------------------------

/// The `key=value` words of a counters line; an unknown key is kept, a value that is not a
/// number is an error naming the line.
fn counters(words: &[&str], what: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("{what}: '{word}' is not key=value"))?;
        let v = v
            .parse::<u64>()
            .map_err(|_| format!("{what}: {k}={v} is not a number"))?;
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// A tag as the hypervisor or a VM prints it: decimal or `0x` hexadecimal.
fn parse_tag(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// One VM's scheduling counters in an accounting report (hypervisor, counted from boot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmAccount {
    pub run_us: u64,
    pub exits: u64,
    pub hypercalls: u64,
    pub mmio_exits: u64,
    pub ioreqs: u64,
    pub virqs: u64,
    /// Its passed-through device's interrupts that went through EL2 (INTx, vPE doorbells);
    /// 0 from a hypervisor that does not report them.
    pub device_irqs: u64,
    /// Loads of its vCPUs onto a pCPU that held another VM's stage 2 (each one a whole soft-TLB
    /// flush under QEMU); `None` from a hypervisor that does not report them.
    pub vmid_switches: Option<u64>,
}

/// One line of the hypervisor's ACCOUNTING_REPORT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountingLine {
    Vm {
        tag: u64,
        vm: String,
        account: VmAccount,
    },
    Machine {
        tag: u64,
        idle_us: u64,
        pcpus: u64,
    },
}

/// Parses `accounting <tag> vm=<name> run_us=.. exits=.. hypercalls=.. mmio_exits=..
/// ioreqs=.. virqs=..` or `accounting <tag> idle_us=.. pcpus=..`, after the hypervisor's `[hv] `
/// prefix (a line without it, or from a VM, is `None`: a guest cannot forge the hypervisor's
/// figures). A malformed accounting line is an error.
pub fn parse_accounting_line(line: &str) -> Option<Result<AccountingLine, String>> {
    let rest = line.strip_prefix("[hv] ")?.strip_prefix("accounting ")?;
    let mut words = rest.split_whitespace();
    let tag_text = words.next()?;
    let words: Vec<&str> = words.collect();
    Some((|| {
        let tag = parse_tag(tag_text).ok_or_else(|| format!("accounting: bad tag '{tag_text}'"))?;
        let (vm, numbers): (Option<&str>, Vec<&str>) = match words.first() {
            Some(w) if w.starts_with("vm=") => (Some(&w[3..]), words[1..].to_vec()),
            _ => (None, words.clone()),
        };
        let c = counters(&numbers, "accounting")?;
        let get = |k: &str| {
            c.get(k)
                .copied()
                .ok_or_else(|| format!("accounting {tag}: no {k}="))
        };
        Ok(match vm {
            Some(vm) if !vm.is_empty() => AccountingLine::Vm {
                tag,
                vm: vm.to_string(),
                account: VmAccount {
                    run_us: get("run_us")?,
                    exits: get("exits")?,
                    hypercalls: get("hypercalls")?,
                    mmio_exits: get("mmio_exits")?,
                    ioreqs: get("ioreqs")?,
                    virqs: get("virqs")?,
                    device_irqs: c.get("device_irqs").copied().unwrap_or(0),
                    vmid_switches: c.get("vmid_switches").copied(),
                },
            },
            Some(_) => return Err(format!("accounting {tag}: empty vm=")),
            None => AccountingLine::Machine {
                tag,
                idle_us: get("idle_us")?,
                pcpus: get("pcpus")?,
            },
        })
    })())
}

/// Per kind of exit (`hypercall`, `wait`, ...): the exits and the busy milliseconds since boot.
pub type El2Counts = BTreeMap<String, (u64, u64)>;

/// Parses the hypervisor's `EL2 busy time by exit kind: hypercall N x M us = T ms, ...; in all
/// T ms (report <tag>)`: the report's tag and, per kind of exit, the exits and the busy
/// milliseconds since boot. `None` for another line, or the power-off line (no tag); a
/// malformed line is an error.
pub fn parse_el2_line(line: &str) -> Option<Result<(u64, El2Counts), String>> {
    let rest = line.strip_prefix(crate::console::EL2_BUSY)?;
    let (kinds, total) = rest.split_once("; in all ")?;
    let tag = total.split_once("(report ")?.1.strip_suffix(')')?;
    Some((|| {
        let tag = parse_tag(tag).ok_or_else(|| format!("EL2 busy: bad tag '{tag}'"))?;
        let mut out = BTreeMap::new();
        for kind in kinds.split(',') {
            let w: Vec<&str> = kind.split_whitespace().collect();
            let bad = || format!("EL2 busy: cannot read '{}'", kind.trim());
            let [name, exits, "x", _, "us", "=", ms, "ms"] = w[..] else {
                return Err(bad());
            };
            let exits = exits.parse().map_err(|_| bad())?;
            let ms = ms.parse().map_err(|_| bad())?;
            out.insert(name.to_string(), (exits, ms));
        }
        Ok((tag, out))
    })())
}

/// One tagged accounting report: every live VM's counters and the idle time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub vms: BTreeMap<String, VmAccount>,
    pub idle_us: Option<u64>,
    pub pcpus: Option<u64>,
    /// The hypervisor's busy time by kind of exit since boot: exits and milliseconds (`None`
    /// from a hypervisor that does not print it).
    pub el2_busy: Option<El2Counts>,
}

/// Every accounting report of a boot's console, by tag (a tag reported twice keeps the
/// first report).
pub fn accounting_reports<'a>(
    lines: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<u64, Accounting>, String> {
    let mut reports: BTreeMap<u64, Accounting> = BTreeMap::new();
    for line in lines {
        if let Some(el2) = parse_el2_line(line) {
            let (tag, busy) = el2?;
            reports.entry(tag).or_default().el2_busy.get_or_insert(busy);
            continue;
        }
        match parse_accounting_line(line) {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(AccountingLine::Vm { tag, vm, account })) => {
                reports
                    .entry(tag)
                    .or_default()
                    .vms
                    .entry(vm)
                    .or_insert(account);
            }
            Some(Ok(AccountingLine::Machine {
                tag,
                idle_us,
                pcpus,
            })) => {
                let r = reports.entry(tag).or_default();
                r.idle_us.get_or_insert(idle_us);
                r.pcpus.get_or_insert(pcpus);
            }
        }
    }
    Ok(reports)
}

/// The share of pCPU time each VM got between two reports: its run time over all the pCPU
/// time accounted in between (every VM's run time plus the idle time), and `idle` the idle
/// share. `None` unless both reports are complete and time passed. A VM that only exists in
/// the later report counts from zero.
pub fn pcpu_shares(before: &Accounting, after: &Accounting) -> Option<BTreeMap<String, f64>> {
    let idle = after.idle_us?.checked_sub(before.idle_us?)?;
    let mut runs = BTreeMap::new();
    for (vm, a) in &after.vms {
        let b = before.vms.get(vm).map_or(0, |b| b.run_us);
        runs.insert(vm.clone(), a.run_us.saturating_sub(b));
    }
    let total = runs.values().sum::<u64>() + idle;
    if total == 0 {
        return None;
    }
    let mut shares: BTreeMap<String, f64> = runs
        .into_iter()
        .map(|(vm, us)| (vm, us as f64 / total as f64))
        .collect();
    shares.insert("idle".into(), idle as f64 / total as f64);
    Some(shares)
}

/// The hypervisor's own busy share of the pCPU time between two reports (its busy
/// milliseconds over every VM's run time plus the idle time: the run times include the traps'
/// EL2 time), and the microseconds per exit of each kind. `None` unless both reports have it
/// and time passed.
pub fn el2_busy_between(before: &Accounting, after: &Accounting) -> Option<El2Busy> {
    let (b, a) = (before.el2_busy.as_ref()?, after.el2_busy.as_ref()?);
    let idle = after.idle_us?.checked_sub(before.idle_us?)?;
    let runs: u64 = after
        .vms
        .iter()
        .map(|(vm, a)| {
            a.run_us
                .saturating_sub(before.vms.get(vm).map_or(0, |b| b.run_us))
        })
        .sum();
    let total_us = runs + idle;
    if total_us == 0 {
        return None;
    }
    let mut busy_ms = 0;
    let mut us_per_exit = BTreeMap::new();
    for (kind, &(exits, ms)) in a {
        let (exits0, ms0) = b.get(kind).copied().unwrap_or((0, 0));
        let (exits, ms) = (exits.checked_sub(exits0)?, ms.checked_sub(ms0)?);
        busy_ms += ms;
        if exits > 0 {
            us_per_exit.insert(kind.clone(), round_to(ms as f64 * 1000.0 / exits as f64, 1));
        }
    }
    Some(El2Busy {
        share: round_to(busy_ms as f64 * 1000.0 / total_us as f64, 4),
        us_per_exit,
    })
}

/// What [`el2_busy_between`] finds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct El2Busy {
    pub share: f64,
    pub us_per_exit: BTreeMap<String, f64>,
}

/// A `netstats <tag> k=v ...` line of an iperf guest (its front-end's counters from connect;
/// tag 2n at the start of its test n, 2n+1 at the end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetStats {
    pub vm: String,
    pub tag: u64,
    pub counters: BTreeMap<String, u64>,
}

/// The front-end's copy sites in the order of the data path, sender's first: the key in a
/// `netstats` line and whether the sending side makes it.
pub const FRONT_COPY_SITES: [(&str, bool); 5] = [
    ("copied_app_to_stack", true),
    ("copied_stack_to_frame", true),
    ("copied_frame_to_pool", true),
    ("copied_pool_to_frame", false),
    ("copied_frame_to_stack", false),
];

/// Parses `[vm] netstats <tag> k=v ...`; `None` for other lines.
pub fn parse_netstats_line(line: &str) -> Option<Result<NetStats, String>> {
    let rest = line.strip_prefix('[')?;
    let (vm, rest) = rest.split_once("] ")?;
    let rest = rest.strip_prefix("netstats ")?;
    let mut words = rest.split_whitespace();
    let tag_text = words.next()?;
    let words: Vec<&str> = words.collect();
    Some((|| {
        Ok(NetStats {
            vm: vm.to_string(),
            tag: parse_tag(tag_text)
                .ok_or_else(|| format!("netstats from {vm}: bad tag '{tag_text}'"))?,
            counters: counters(&words, &format!("netstats from {vm}"))?,
        })
    })())
}

/// The per-port line the driver domain prints when a guest's port closes:
/// `[dd] netback <guest id> k=v ...` (this connection's counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    pub guest: u16,
    pub counters: BTreeMap<String, u64>,
}

/// Parses `[vm] netback <guest> k=v ...`; `None` for other lines.
pub fn parse_backend_line(line: &str) -> Option<Result<BackendStats, String>> {
    let rest = line.strip_prefix('[')?;
    let (_vm, rest) = rest.split_once("] ")?;
    let rest = rest.strip_prefix("netback ")?;
    let mut words = rest.split_whitespace();
    let guest_text = words.next()?;
    let words: Vec<&str> = words.collect();
    Some((|| {
        Ok(BackendStats {
            guest: guest_text
                .parse()
                .map_err(|_| format!("netback: bad guest '{guest_text}'"))?,
            counters: counters(&words, "netback")?,
        })
    })())
}

/// The key-wise sum of some counter maps (the pairs of a scaling boot); `None` when there is
/// none to add.
pub fn sum_counters(
    maps: impl IntoIterator<Item = Option<BTreeMap<String, u64>>>,
) -> Option<BTreeMap<String, u64>> {
    let mut total: Option<BTreeMap<String, u64>> = None;
    for map in maps.into_iter().flatten() {
        let sum = total.get_or_insert_with(BTreeMap::new);
        for (k, v) in map {
            *sum.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// The counters of guest `id`'s port from all its `netback` lines (the driver domain prints
/// two per port, as a console line holds 200 bytes), the first value of a key winning: a guest
/// that reconnected has lines from each connection, and the first connection's are taken, as
/// they were when there was one line. `None` if there is no line for it.
pub fn merged_backend(ports: &[BackendStats], id: usize) -> Option<BTreeMap<String, u64>> {
    let mut merged: Option<BTreeMap<String, u64>> = None;
    for port in ports.iter().filter(|p| usize::from(p.guest) == id) {
        let m = merged.get_or_insert_with(BTreeMap::new);
        for (k, v) in &port.counters {
            m.entry(k.clone()).or_insert(*v);
        }
    }
    merged
}

/// What one test of one path measured, for its reasons: the counters of the guests on it
/// between the marks of their test, the back-end's port lines, the accounting reports.
#[derive(Clone, Debug, Default)]
pub struct PathRun {
    /// Payload bytes the receiver counted (iperf3).
    pub payload_bytes: u64,
    /// The sending and receiving guest's counter differences over the test (`None`: the
    /// side is not a guest of the split driver: the host, or the driver domain's NIC).
    pub sender: Option<BTreeMap<String, u64>>,
    pub receiver: Option<BTreeMap<String, u64>>,
    /// The back-end's lines of the sending and receiving guest's ports (whole connection).
    pub sender_port: Option<BTreeMap<String, u64>>,
    pub receiver_port: Option<BTreeMap<String, u64>>,
    /// Accounting reports before and after the test.
    pub accounting: Option<(Accounting, Accounting)>,
}

/// The reasons of one run of one path (see [`Reasons`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReasons {
    pub events_per_frame: Option<f64>,
    pub bytes_per_notification: Option<f64>,
    pub copies_per_byte: Option<f64>,
    /// Copies per payload byte at each copy site (front-end sites, then `backend`).
    pub copies: BTreeMap<String, f64>,
    pub pcpu_share: BTreeMap<String, f64>,
    pub vmid_switches_per_frame: Option<f64>,
    pub frames_per_ack: Option<f64>,
    /// The hypervisor's own busy share of the pCPU time, and its microseconds per exit of each
    /// kind.
    pub el2_busy_share: Option<f64>,
    pub el2_us_per_exit: BTreeMap<String, f64>,
    /// Per 1000 frames the back-end had for the receiving guest over its connection: frames
    /// dropped as it offered too few receive buffers, and frames that waited for them
    /// (back-pressure between guests).
    pub receiver_drops_per_kframe: Option<f64>,
    pub receiver_waits_per_kframe: Option<f64>,
}

/// The difference of two counter snapshots (`None` if a key is missing or went backwards).
pub fn counter_delta(
    start: &BTreeMap<String, u64>,
    end: &BTreeMap<String, u64>,
) -> Option<BTreeMap<String, u64>> {
    end.iter()
        .map(|(k, v)| Some((k.clone(), v.checked_sub(*start.get(k)?)?)))
        .collect()
}

/// The counter difference of `vm` over its test n (its marks 2n and 2n+1), if it printed
/// both. A mark may span several lines (a console line holds 200 bytes): their counters are
/// merged, the first line's value winning.
pub fn test_delta(stats: &[NetStats], vm: &str, test: u64) -> Option<BTreeMap<String, u64>> {
    let mark = |tag: u64| {
        let mut merged: Option<BTreeMap<String, u64>> = None;
        for s in stats.iter().filter(|s| s.vm == vm && s.tag == tag) {
            let m = merged.get_or_insert_with(BTreeMap::new);
            for (k, v) in &s.counters {
                m.entry(k.clone()).or_insert(*v);
            }
        }
        merged
    };
    counter_delta(&mark(2 * test)?, &mark(2 * test + 1)?)
}

impl PathRun {
    /// The reasons, from the counters only:
    /// - events per frame: the events the path's guests sent and had delivered (each
    ///   back-end event that woke a guest), over the data frames (the receiving guest's
    ///   frames, else the sending guest's);
    /// - bytes per notification: payload bytes over those events;
    /// - copies per byte: each copy site's bytes over the payload bytes; the back-end's share
    ///   is its copies per frame byte over its connection (bytes copied into the receiving
    ///   guest over frame bytes delivered to it; or, toward the NIC, bytes copied out of
    ///   guests over the frame bytes the sending guest sent) times the frame bytes of this
    ///   test as the guest counted them;
    /// - the pCPU share of every VM between the accounting reports;
    /// - VMID switches per frame: every VM's `vmid_switches` between the reports over the data
    ///   frames;
    /// - data frames per ACK: the frames the receiving guest got over the frames it sent back
    ///   (its ACKs and window updates), else the sending guest's frames sent over those it got.
    ///   How much of a burst a receiver takes before it answers (issue 11: a receiver that took
    ///   a whole window per answer left its sender waiting);
    /// - the receiving guest's drops and waits per 1000 frames the back-end had for it (its
    ///   port's `rx_no_buffer` and `rx_held` over delivered plus dropped frames, whole
    ///   connection): loss inside the machine, which TCP pays for in retransmissions.
    pub fn reasons(&self) -> RunReasons {
        let mut r = RunReasons::default();
        let mut vmid_switches = None;
        if let Some((before, after)) = &self.accounting {
            r.pcpu_share = pcpu_shares(before, after).unwrap_or_default();
            vmid_switches = vmid_switches_between(before, after);
            if let Some(el2) = el2_busy_between(before, after) {
                r.el2_busy_share = Some(el2.share);
                r.el2_us_per_exit = el2.us_per_exit;
            }
        }
        let get =
            |m: &Option<BTreeMap<String, u64>>, k: &str| m.as_ref().and_then(|m| m.get(k).copied());
        let frames = get(&self.receiver, "rx_frames").or(get(&self.sender, "tx_frames"));
        let events: u64 = [&self.sender, &self.receiver]
            .iter()
            .filter_map(|m| m.as_ref())
            .map(|m| {
                m.get("events_sent").copied().unwrap_or(0)
                    + m.get("events_received").copied().unwrap_or(0)
            })
            .sum();
        let guests = self.sender.is_some() || self.receiver.is_some();
        let (data, acks) = match (&self.receiver, &self.sender) {
            (Some(_), _) => (
                get(&self.receiver, "rx_frames"),
                get(&self.receiver, "tx_frames"),
            ),
            (None, Some(_)) => (
                get(&self.sender, "tx_frames"),
                get(&self.sender, "rx_frames"),
            ),
            (None, None) => (None, None),
        };
        if let (Some(data), Some(acks)) = (data, acks.filter(|&a| a > 0)) {
            r.frames_per_ack = Some(round_to(data as f64 / acks as f64, 3));
        }
        if let Some(frames) = frames.filter(|&f| f > 0) {
            r.events_per_frame = Some(round_to(events as f64 / frames as f64, 4));
            r.vmid_switches_per_frame =
                vmid_switches.map(|n| round_to(n as f64 / frames as f64, 4));
        }
        if let (Some(delivered), Some(dropped)) = (
            get(&self.receiver_port, "rx_frames"),
            get(&self.receiver_port, "rx_no_buffer"),
        ) {
            let offered = delivered + dropped;
            if offered > 0 {
                let per_k = |n: u64| round_to(n as f64 * 1000.0 / offered as f64, 3);
                r.receiver_drops_per_kframe = Some(per_k(dropped));
                r.receiver_waits_per_kframe = get(&self.receiver_port, "rx_held").map(per_k);
            }
        }
        let payload = self.payload_bytes;
        if guests && events > 0 && payload > 0 {
            r.bytes_per_notification = Some(round_to(payload as f64 / events as f64, 1));
        }
        if payload == 0 || !guests {
            return r;
        }
        for (site, sending) in FRONT_COPY_SITES {
            let side = if sending {
                &self.sender
            } else {
                &self.receiver
            };
            if let Some(bytes) = get(side, site) {
                let name = site.trim_start_matches("copied_");
                r.copies
                    .insert(name.to_string(), round_to(bytes as f64 / payload as f64, 4));
            }
        }
        // The back-end's copy: into the receiving guest's buffers, else (toward the NIC)
        // out of the sending guest's pool; per frame byte of its connection, applied to the
        // test's frame bytes (a connection may carry other tests).
        let scaled = |port: &Option<BTreeMap<String, u64>>,
                      guest: &Option<BTreeMap<String, u64>>,
                      copied: &str,
                      bytes: &str|
         -> Option<f64> {
            let copied = get(port, copied)? as f64;
            let all = get(port, bytes)? as f64;
            let test = get(guest, bytes)? as f64;
            (all > 0.0).then(|| copied / all * test)
        };
        let backend = if self.receiver.is_some() {
            scaled(
                &self.receiver_port,
                &self.receiver,
                "copied_to_guest",
                "rx_bytes",
            )
        } else {
            scaled(
                &self.sender_port,
                &self.sender,
                "copied_from_guests",
                "tx_bytes",
            )
        };
        if let Some(bytes) = backend {
            r.copies
                .insert("backend".into(), round_to(bytes / payload as f64, 4));
        }
        if !r.copies.is_empty() {
            r.copies_per_byte = Some(round_to(r.copies.values().sum(), 4));
        }
        r
    }
}

/// Every VM's VMID switches between two reports, summed (`None` if a VM of the later report
/// does not report them, or a count went backwards). A VM only in the later report counts from
/// zero.
pub fn vmid_switches_between(before: &Accounting, after: &Accounting) -> Option<u64> {
    after.vms.iter().try_fold(0u64, |sum, (vm, a)| {
        let earlier = match before.vms.get(vm) {
            Some(b) => b.vmid_switches?,
            None => 0,
        };
        Some(sum + a.vmid_switches?.checked_sub(earlier)?)
    })
}

/// The reasons beside a path's throughput over several runs, each a [`Stat`] over the runs'
/// values (see [`PathRun::reasons`] for how each is counted). Missing where no run had it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reasons {
    pub events_per_frame: Option<Stat>,
    pub bytes_per_notification: Option<Stat>,
    pub copies_per_byte: Option<Stat>,
    /// World switches that changed a pCPU's VMID (every VM's, summed) per data frame.
    pub vmid_switches_per_frame: Option<Stat>,
    /// Data frames per frame the other way (the receiver's ACKs and window updates).
    pub frames_per_ack: Option<Stat>,
    /// The hypervisor's own busy share of the pCPU time (EL2, from trap to return, less
    /// idle), and its microseconds per exit of each kind (medians over runs).
    pub el2_busy_share: Option<Stat>,
    pub el2_us_per_exit: BTreeMap<String, f64>,
    /// The receiving guest's drops and waits for receive buffers per 1000 frames.
    pub receiver_drops_per_kframe: Option<Stat>,
    pub receiver_waits_per_kframe: Option<Stat>,
    /// Copies per payload byte at each copy site (medians over runs).
    pub copies: BTreeMap<String, f64>,
    /// Each VM's share of the pCPU time during the test, and `idle` (medians over runs).
    pub pcpu_share: BTreeMap<String, f64>,
}

impl Reasons {
    pub fn of_runs(runs: &[RunReasons]) -> Reasons {
        let stat = |f: fn(&RunReasons) -> Option<f64>| {
            Stat::of_runs(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        let medians = |f: fn(&RunReasons) -> &BTreeMap<String, f64>| {
            let mut by_key: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for run in runs {
                for (k, v) in f(run) {
                    by_key.entry(k.clone()).or_default().push(*v);
                }
            }
            by_key
                .into_iter()
                .map(|(k, v)| (k, round_to(median(&v), 4)))
                .collect()
        };
        Reasons {
            events_per_frame: stat(|r| r.events_per_frame),
            bytes_per_notification: stat(|r| r.bytes_per_notification),
            copies_per_byte: stat(|r| r.copies_per_byte),
            vmid_switches_per_frame: stat(|r| r.vmid_switches_per_frame),
            frames_per_ack: stat(|r| r.frames_per_ack),
            el2_busy_share: stat(|r| r.el2_busy_share),
            el2_us_per_exit: medians(|r| &r.el2_us_per_exit),
            receiver_drops_per_kframe: stat(|r| r.receiver_drops_per_kframe),
            receiver_waits_per_kframe: stat(|r| r.receiver_waits_per_kframe),
            copies: medians(|r| &r.copies),
            pcpu_share: medians(|r| &r.pcpu_share),
        }
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.events_per_frame.is_none()
            && self.copies_per_byte.is_none()
            && self.pcpu_share.is_empty()
    }

    /// One table line: `0.52 ev/frame, 17000 B/notif., 5.06 copies/B; pCPU dd 40%, ...`.
    pub fn summary(&self) -> String {
        let num = |s: &Option<Stat>, decimals: usize| {
            s.as_ref()
                .map(|s| format!("{:.*}", decimals, s.median))
                .unwrap_or_else(|| "-".into())
        };
        let mut out = format!(
            "{} events/frame, {} B/notification, {} copies/B, {} VMID switches/frame, \
             {} frames/ACK",
            num(&self.events_per_frame, 3),
            num(&self.bytes_per_notification, 0),
            num(&self.copies_per_byte, 2),
            num(&self.vmid_switches_per_frame, 3),
            num(&self.frames_per_ack, 2)
        );
        if let Some(drops) = &self.receiver_drops_per_kframe {
            out += &format!(
                "; receiver per 1000 frames: {:.1} dropped, {} waited",
                drops.median,
                self.receiver_waits_per_kframe
                    .as_ref()
                    .map_or("-".into(), |w| format!("{:.1}", w.median))
            );
        }
        if let Some(el2) = &self.el2_busy_share {
            let per_exit: Vec<String> = ["wait", "hypercall", "interrupt"]
                .iter()
                .filter_map(|k| Some(format!("{k} {:.0} us", self.el2_us_per_exit.get(*k)?)))
                .collect();
            out += &format!("; EL2 busy {:.1}%", el2.median * 100.0);
            if !per_exit.is_empty() {
                out += &format!(" ({})", per_exit.join(", "));
            }
        }
        if self.pcpu_share.is_empty() {
            out += "; pCPU share -";
        } else {
            let shares: Vec<String> = self
                .pcpu_share
                .iter()
                .map(|(vm, s)| format!("{vm} {:.0}%", s * 100.0))
                .collect();
            out += &format!("; pCPU share {}", shares.join(", "));
        }
        out
    }
}

// ---- The three ways to give a VM a NIC: costs per packet ----------------------------------------

/// The MSS of a 1500-byte MTU: the passthrough path's data packets are counted as its
/// payload over this (the driver domain prints no per-test frame counter; slirp sends
/// full-sized segments in a bulk transfer).
pub const NIC_MSS: u64 = 1460;

/// What one test of one path cost per data packet the receiver got, from the accounting
/// reports before and after it: the path's VMs' exits to EL2, forwarded I/O requests (the
/// device-model requests of an emulated NIC) and injected virtual interrupts (the virtual
/// timer's included), summed over the VMs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PacketCosts {
    pub packets: u64,
    pub exits: f64,
    pub ioreqs: f64,
    pub interrupts: f64,
    /// Each VM's exits per packet.
    pub exits_by_vm: BTreeMap<String, f64>,
    /// The VMs' passed-through device interrupts that went through EL2 (not per packet).
    pub device_irqs: u64,
    /// The NIC interrupts the driver domain counted around the test (passthrough only).
    pub nic_interrupts: Option<u64>,
}

/// The costs of `vms` between `before` and `after` over `packets`. An error when there are no
/// packets, a VM is missing from a report, or a counter went backwards (a VM restarted).
pub fn packet_costs(
    before: &Accounting,
    after: &Accounting,
    vms: &[&str],
    packets: u64,
) -> Result<PacketCosts, String> {
    if packets == 0 {
        return Err("no packets were carried".into());
    }
    let mut costs = PacketCosts {
        packets,
        ..PacketCosts::default()
    };
    let per = |n: u64| round_to(n as f64 / packets as f64, 4);
    let (mut exits, mut ioreqs, mut virqs) = (0u64, 0u64, 0u64);
    for vm in vms {
        let (b, a) = match (before.vms.get(*vm), after.vms.get(*vm)) {
            (Some(b), Some(a)) => (b, a),
            _ => return Err(format!("no accounting of {vm} in both reports")),
        };
        let delta = |f: fn(&VmAccount) -> u64| {
            f(a).checked_sub(f(b))
                .ok_or_else(|| format!("the accounting of {vm} went backwards"))
        };
        let vm_exits = delta(|v| v.exits)?;
        exits += vm_exits;
        ioreqs += delta(|v| v.ioreqs)?;
        virqs += delta(|v| v.virqs)?;
        costs.device_irqs += delta(|v| v.device_irqs)?;
        costs.exits_by_vm.insert(vm.to_string(), per(vm_exits));
    }
    costs.exits = per(exits);
    costs.ioreqs = per(ioreqs);
    costs.interrupts = per(virqs);
    Ok(costs)
}

/// A path's costs per packet over several runs: each a [`Stat`] over the runs' values.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PathCosts {
    /// Data packets the receiver got in a test.
    pub packets: Option<Stat>,
    pub exits_per_packet: Option<Stat>,
    pub ioreqs_per_packet: Option<Stat>,
    pub interrupts_per_packet: Option<Stat>,
    /// Each VM's exits per packet (medians over runs).
    pub exits_per_packet_by_vm: BTreeMap<String, f64>,
}

impl PathCosts {
    pub fn of_runs(runs: &[PacketCosts]) -> PathCosts {
        let stat =
            |f: fn(&PacketCosts) -> f64| Stat::of_runs(&runs.iter().map(f).collect::<Vec<_>>());
        let mut by_vm: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in runs {
            for (vm, v) in &run.exits_by_vm {
                by_vm.entry(vm.clone()).or_default().push(*v);
            }
        }
        PathCosts {
            packets: stat(|r| r.packets as f64),
            exits_per_packet: stat(|r| r.exits),
            ioreqs_per_packet: stat(|r| r.ioreqs),
            interrupts_per_packet: stat(|r| r.interrupts),
            exits_per_packet_by_vm: by_vm
                .into_iter()
                .map(|(vm, v)| (vm, round_to(median(&v), 4)))
                .collect(),
        }
    }
}

/// The NIC interrupts a driver domain's `<name> NIC counters: ... interrupts N, ...` line
/// says it has taken since boot; `None` for any other line.
pub fn nic_interrupts(line: &str) -> Option<u64> {
    let rest = line.split_once(" NIC counters: ")?.1;
    let after = rest.split_once("interrupts ")?.1;
    after.split(',').next()?.trim().parse().ok()
}

/// The NIC interrupts taken between the accounting reports tagged `before` and `after`: the
/// last NIC counters line before the first report (none: from boot, 0) and the first one
/// after the second. The lines come every 2 s, so this brackets the test with up to 2 s on
/// each side; `None` without a line after the second report.
pub fn nic_interrupts_between<'a>(
    lines: impl IntoIterator<Item = &'a String>,
    before: u64,
    after: u64,
) -> Option<u64> {
    let (first, second) = (
        format!("[hv] accounting {before} idle_us="),
        format!("[hv] accounting {after} idle_us="),
    );
    let (mut start, mut seen_first, mut seen_second) = (0, false, false);
    for line in lines {
        if line.starts_with(&first) {
            seen_first = true;
        } else if line.starts_with(&second) && seen_first {
            seen_second = true;
        } else if let Some(n) = nic_interrupts(line) {
            if seen_second {
                return n.checked_sub(start);
            }
            if !seen_first {
                start = n;
            }
        }
    }
    None
}

/// One test an iperf3 server served, as its console tells: the test's number (1-based, in
/// the order they started: the `netstats`/accounting tags are 2n and 2n + 1), its peer, and
/// its receiver result if it finished.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedTest {
    pub n: u64,
    pub peer: String,
    pub result: Option<crate::iperf::ResultLine>,
}

/// The tests a server VM's console lines show: each `iperf: server A <- B: ... test started`
/// line opens test n (peer B), and the receiver result line that follows is its result. A
/// malformed result line is an error.
pub fn served_tests<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<ServedTest>, String> {
    let mut tests: Vec<ServedTest> = Vec::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("iperf: server ") {
            if let Some((head, _)) = rest
                .split_once(": ")
                .filter(|(_, t)| t.contains("test started"))
            {
                let peer = head.rsplit_once(" <- ").map(|(_, p)| p).unwrap_or_default();
                tests.push(ServedTest {
                    n: tests.len() as u64 + 1,
                    peer: peer.to_string(),
                    result: None,
                });
            }
            continue;
        }
        if let Some(result) = crate::iperf::parse_result_line(line) {
            let result = result?;
            if let Some(test) = tests.last_mut().filter(|t| t.result.is_none()) {
                if result.receiver {
                    test.result = Some(result);
                }
            }
        }
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(vm: &str, name: &str, median: u64) -> String {
        format!("[{vm}] BENCH {name} min=1 median={median} max=900 n=10 freq_hz=62500000 (x)")
    }

    #[test]
    fn counters_of_several_guests_are_summed_key_by_key() {
        let map = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert_eq!(sum_counters([]), None);
        assert_eq!(sum_counters([None, None]), None);
        let a = map(&[("rx_frames", 10), ("events_sent", 2)]);
        let b = map(&[("rx_frames", 5), ("tx_frames", 1)]);
        assert_eq!(
            sum_counters([Some(a.clone()), None, Some(b)]),
            Some(map(&[
                ("rx_frames", 15),
                ("events_sent", 2),
                ("tx_frames", 1)
            ]))
        );
        assert_eq!(sum_counters([Some(a.clone())]), Some(a));
    }

    #[test]
    fn parses_a_bench_line_and_ignores_others() {
        let s = parse_line(&line("g", "evtchn_roundtrip_ticks", 50))
            .unwrap()
            .unwrap();
        assert_eq!(s.vm, "g");
        assert_eq!(s.name, "evtchn_roundtrip_ticks");
        assert_eq!(
            (s.min, s.median, s.max, s.n, s.freq_hz, s.unit),
            (1, 50, 900, 10, 62_500_000, Unit::Ticks)
        );
        assert!(parse_line("[g] hello").is_none());
        assert!(parse_line("[hv] sluice hypervisor").is_none());
        assert!(parse_line("BENCH x min=1").is_none(), "needs a VM prefix");
    }

    #[test]
    fn parses_a_rate_line() {
        let s = parse_line(
            "[mem] BENCH memcpy_mbps min=8000 median=9000 max=9500 n=32 freq_hz=0 \
             unit=mbit_per_s (1024 KiB per copy)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.name.as_str(), s.median, s.unit, s.freq_hz),
            ("memcpy_mbps", 9000, Unit::MbitPerS, 0)
        );
        let e = parse_line("[m] BENCH x min=1 median=2 max=3 n=4 freq_hz=0 unit=furlongs")
            .unwrap()
            .unwrap_err();
        assert!(e.contains("unit=furlongs"), "{e}");
    }

    #[test]
    fn malformed_bench_lines_are_errors() {
        assert!(parse_line("[g] BENCH x min=1 median=2 max=3 n=4")
            .unwrap()
            .is_err());
        assert!(
            parse_line("[g] BENCH x min=1 median=two max=3 n=4 freq_hz=5")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn combine_takes_the_median_of_run_medians() {
        let lines: Vec<String> = [30, 10, 20]
            .iter()
            .map(|&m| line("g", "rt", m))
            .chain([line("g", "map", 7)])
            .collect();
        let figures = combine(&collect(&lines).unwrap());
        assert_eq!(figures.len(), 2);
        let rt = figures.iter().find(|f| f.name == "rt").unwrap();
        assert_eq!((rt.median, rt.runs, rt.min, rt.max), (20, 3, 1, 900));
        assert_eq!(rt.run_medians, [30, 10, 20]);
        assert!((rt.median_us.unwrap() - 0.32).abs() < 1e-9);
        let stat = rt.stat().unwrap();
        assert!((stat.median - 0.32).abs() < 1e-9);
        assert!((stat.min - 0.016).abs() < 1e-9 && (stat.max - 14.4).abs() < 1e-9);
        assert_eq!((stat.runs, stat.samples), (3, Some(30)));
        let text = table(&figures);
        assert!(text.lines().count() == 3 && text.contains("rt"), "{text}");
    }

    #[test]
    fn rate_figures_stay_in_their_unit() {
        let lines: Vec<String> = [9000, 8000]
            .iter()
            .map(|m| {
                format!(
                    "[m] BENCH memcpy_mbps min=7000 median={m} max=9900 n=32 freq_hz=0 \
                     unit=mbit_per_s"
                )
            })
            .collect();
        let figures = combine(&collect(&lines).unwrap());
        let f = &figures[0];
        assert_eq!((f.unit, f.median_us), (Unit::MbitPerS, None));
        let stat = f.stat().unwrap();
        assert_eq!(stat.values, [9000.0, 8000.0]);
        assert_eq!((stat.median, stat.min, stat.max), (8500.0, 7000.0, 9900.0));
        assert!(table(&figures).contains("Mbit/s"));
        // A tick figure without a frequency cannot be put in microseconds.
        let lines = ["[g] BENCH t min=1 median=2 max=3 n=1 freq_hz=0".to_string()];
        assert!(combine(&collect(&lines).unwrap())[0].stat().is_none());
    }

    #[test]
    fn stats_of_runs_and_of_sampled_runs() {
        assert!(Stat::of_runs(&[]).is_none());
        let s = Stat::of_runs(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.values, [3.0, 1.0, 2.0]);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let s = Stat::of_runs(&[95.89000000000001, 0.1 + 0.2]).unwrap();
        assert_eq!((s.values.as_slice(), s.median), (&[95.89, 0.3][..], 48.095));
        assert_eq!(round_to(2.0 / 3.0, 6), 0.666667);
        let s = Stat::of_sampled_runs(&[vec![1.0, 5.0, 3.0], vec![], vec![10.0, 0.5]]).unwrap();
        assert_eq!(s.values, [3.0, 5.25]);
        assert_eq!((s.median, s.min, s.max), (4.125, 0.5, 10.0));
        assert_eq!((s.runs, s.samples), (2, Some(5)));
        assert!(Stat::of_sampled_runs(&[vec![]]).is_none());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["samples"], 5);
        let json = serde_json::to_value(Stat::of_runs(&[1.0]).unwrap()).unwrap();
        assert!(json.get("samples").is_none(), "{json}");
    }

    #[test]
    fn parses_ping_replies_only() {
        let r = parse_ping_reply("[guest1] ping 10.0.2.17: seq 3 rtt 0.532 ms").unwrap();
        assert_eq!((r.target.as_str(), r.seq), ("10.0.2.17", 3));
        assert!((r.rtt_us - 532.0).abs() < 1e-9);
        let r = parse_ping_reply("ping 10.0.2.2: seq 12 rtt 11.004 ms").unwrap();
        assert!((r.rtt_us - 11_004.0).abs() < 1e-6);
        for other in [
            "[guest1] PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.412/0.532/0.811 ms",
            "[guest1] ping 10.0.2.17: seq 5 not sent (ICMP buffer full)",
            "[guest1] ping 10.0.2.17: no answer within 15000 ms",
            "[guest1] ping 10.0.2.17: seq x rtt 1 ms",
            "[guest1] ping 10.0.2.17: seq 1 rtt 1 parsecs",
            "[guest1] net up: MAC 02:51:55:00:00:02",
        ] {
            assert_eq!(parse_ping_reply(other), None, "{other}");
        }
    }

    const ACCOUNTING: [&str; 8] = [
        "[hv] accounting 2 vm=driver-domain run_us=1000 exits=10 hypercalls=5 mmio_exits=1 ioreqs=0 virqs=3 vmid_switches=7",
        "[hv] accounting 2 vm=client1 run_us=2000 exits=20 hypercalls=6 mmio_exits=0 ioreqs=0 virqs=4 vmid_switches=5",
        "[hv] accounting 2 idle_us=7000 pcpus=2",
        "[client1] accounting 3 vm=client1 run_us=999999999 exits=0 hypercalls=0 mmio_exits=0 ioreqs=0 virqs=0",
        "[hv] accounting 0x3 vm=driver-domain run_us=5000 exits=90 hypercalls=50 mmio_exits=1 ioreqs=0 virqs=30 vmid_switches=27",
        "[hv] accounting 3 vm=client1 run_us=4000 exits=40 hypercalls=60 mmio_exits=0 ioreqs=0 virqs=40 vmid_switches=15",
        "[hv] accounting 3 vm=server1 run_us=1000 exits=4 hypercalls=6 mmio_exits=0 ioreqs=0 virqs=4 vmid_switches=10",
        "[hv] accounting 3 idle_us=9000 pcpus=2",
    ];

    #[test]
    fn the_hypervisors_busy_time_is_its_share_of_the_pcpus_between_two_reports() {
        let mut lines: Vec<String> = ACCOUNTING.iter().map(|l| l.to_string()).collect();
        lines.extend(
            [
                "[hv] EL2 busy time by exit kind: hypercall 10 x 100.0 us = 1 ms, wait 5 x 200.0 us = 1 ms, mmio 0 x 0.0 us = 0 ms, other 0 x 0.0 us = 0 ms, interrupt 0 x 0.0 us = 0 ms; in all 2 ms (report 2)",
                "[client1] EL2 busy time by exit kind: hypercall 1 x 1.0 us = 999 ms; in all 999 ms (report 3)",
                "[hv] EL2 busy time by exit kind: hypercall 110 x 18.1 us = 2 ms, wait 25 x 200.0 us = 5 ms, mmio 0 x 0.0 us = 0 ms, other 0 x 0.0 us = 0 ms, interrupt 4 x 10.0 us = 0 ms; in all 7 ms (report 3)",
                "[hv] EL2 busy time by exit kind: hypercall 999 x 1.0 us = 999 ms, wait 0 x 0.0 us = 0 ms, mmio 0 x 0.0 us = 0 ms, other 0 x 0.0 us = 0 ms, interrupt 0 x 0.0 us = 0 ms; in all 999 ms",
            ]
            .map(String::from),
        );
        let reports = accounting_reports(&lines).unwrap();
        // Runs 4000 + 2000 + 1000 us and 2000 us idle between the reports: 9000 us, 5 of its
        // ms in EL2; a VM's line and the power-off line (no tag) count nothing.
        let el2 = el2_busy_between(&reports[&2], &reports[&3]).unwrap();
        assert_eq!(el2.share, round_to(5000.0 / 9000.0, 4));
        assert_eq!(el2.us_per_exit["hypercall"], 10.0);
        assert_eq!(el2.us_per_exit["wait"], 200.0);
        assert_eq!(el2.us_per_exit["interrupt"], 0.0);
        assert!(!el2.us_per_exit.contains_key("mmio"));
        let run = PathRun {
            accounting: Some((reports[&2].clone(), reports[&3].clone())),
            ..PathRun::default()
        };
        let reasons = Reasons::of_runs(&[run.reasons()]);
        assert!(
            reasons
                .summary()
                .contains("; EL2 busy 55.6% (wait 200 us, hypercall 10 us, interrupt 0 us)"),
            "{}",
            reasons.summary()
        );
        // Without the lines (an older hypervisor): nothing, and no error.
        let without = accounting_reports(&lines[..8]).unwrap();
        assert_eq!(el2_busy_between(&without[&2], &without[&3]), None);
        // A malformed line is an error, not a silent zero.
        assert!(parse_el2_line(
            "[hv] EL2 busy time by exit kind: hypercall ten x 1.0 us = 1 ms; in all 1 ms (report 3)"
        )
        .unwrap()
        .is_err());
    }

    #[test]
    fn parses_accounting_lines_from_the_hypervisor_only() {
        let l = parse_accounting_line(ACCOUNTING[0]).unwrap().unwrap();
        assert_eq!(
            l,
            AccountingLine::Vm {
                tag: 2,
                vm: "driver-domain".into(),
                account: VmAccount {
                    run_us: 1000,
                    exits: 10,
                    hypercalls: 5,
                    mmio_exits: 1,
                    ioreqs: 0,
                    virqs: 3,
                    device_irqs: 0,
                    vmid_switches: Some(7),
                }
            }
        );
        assert_eq!(
            parse_accounting_line(ACCOUNTING[2]).unwrap().unwrap(),
            AccountingLine::Machine {
                tag: 2,
                idle_us: 7000,
                pcpus: 2
            }
        );
        // A VM printing the same words forges nothing.
        assert!(parse_accounting_line(ACCOUNTING[3]).is_none());
        assert!(parse_accounting_line("[hv] VM client1 stopped").is_none());
        for bad in [
            "[hv] accounting 2 vm=dd run_us=x exits=1 hypercalls=1 mmio_exits=1 ioreqs=1 virqs=1",
            "[hv] accounting 2 vm=dd run_us=1 exits=1",
            "[hv] accounting two idle_us=1 pcpus=2",
            "[hv] accounting 2 idle_us=1",
            "[hv] accounting 2 vm= run_us=1 exits=1 hypercalls=1 mmio_exits=1 ioreqs=1 virqs=1",
            "[hv] accounting 2 idle_us=1 pcpus",
        ] {
            assert!(parse_accounting_line(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_are_run_time_over_all_accounted_time_between_two_reports() {
        let lines: Vec<String> = ACCOUNTING.iter().map(|l| l.to_string()).collect();
        let reports = accounting_reports(&lines).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[&3].vms["client1"].run_us, 4000,
            "the VM's forged line is ignored"
        );
        assert_eq!(
            (reports[&3].idle_us, reports[&3].pcpus),
            (Some(9000), Some(2))
        );
        let shares = pcpu_shares(&reports[&2], &reports[&3]).unwrap();
        // dd 4000, client1 2000, server1 1000 (new: from zero), idle 2000: 9000 in all.
        let expect = [
            ("client1", 2.0 / 9.0),
            ("driver-domain", 4.0 / 9.0),
            ("idle", 2.0 / 9.0),
            ("server1", 1.0 / 9.0),
        ];
        assert_eq!(shares.len(), expect.len());
        for (vm, share) in expect {
            assert!((shares[vm] - share).abs() < 1e-12, "{vm}: {shares:?}");
        }
        assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-12);
        // Incomplete or backwards reports give nothing.
        let mut no_idle = reports[&3].clone();
        no_idle.idle_us = None;
        assert!(pcpu_shares(&reports[&2], &no_idle).is_none());
        assert!(pcpu_shares(&reports[&3], &reports[&2]).is_none());
        assert!(pcpu_shares(&Accounting::default(), &Accounting::default()).is_none());
        let bad = vec!["[hv] accounting 2 idle_us=q pcpus=2".to_string()];
        assert!(accounting_reports(&bad).is_err());
    }

    #[test]
    fn vmid_switches_are_summed_over_the_vms_between_two_reports() {
        let lines: Vec<String> = ACCOUNTING.iter().map(|l| l.to_string()).collect();
        let reports = accounting_reports(&lines).unwrap();
        // dd 27 - 7, client1 15 - 5, server1 10 (new: from zero).
        assert_eq!(vmid_switches_between(&reports[&2], &reports[&3]), Some(40));
        // Backwards, or a VM that does not report them: no figure rather than a wrong one.
        assert_eq!(vmid_switches_between(&reports[&3], &reports[&2]), None);
        let mut silent = reports[&3].clone();
        silent.vms.get_mut("server1").unwrap().vmid_switches = None;
        assert_eq!(vmid_switches_between(&reports[&2], &silent), None);
        let old = parse_accounting_line(
            "[hv] accounting 2 vm=dd run_us=1 exits=1 hypercalls=1 mmio_exits=1 ioreqs=1 virqs=1",
        );
        assert!(matches!(
            old,
            Some(Ok(AccountingLine::Vm {
                account: VmAccount {
                    vmid_switches: None,
                    ..
                },
                ..
            }))
        ));
        // Per data frame in the path's reasons.
        let run = PathRun {
            receiver: Some([("rx_frames".to_string(), 80)].into()),
            accounting: Some((reports[&2].clone(), reports[&3].clone())),
            ..PathRun::default()
        };
        assert_eq!(run.reasons().vmid_switches_per_frame, Some(0.5));
    }

    fn netstats(vm: &str, tag: u64, scale: u64) -> String {
        format!(
            "[{vm}] netstats {tag} tx_frames={} tx_bytes={} rx_frames={} rx_bytes={} \
             events_sent={} events_suppressed=0 events_received={} copied_app_to_stack={} \
             copied_stack_to_frame={} copied_frame_to_pool={} copied_pool_to_frame={} \
             copied_frame_to_stack={}",
            100 * scale,
            100_000 * scale,
            50 * scale,
            3_000 * scale,
            10 * scale,
            20 * scale,
            100_000 * scale,
            101_000 * scale,
            101_500 * scale,
            3_000 * scale,
            3_000 * scale,
        )
    }

    #[test]
    fn parses_netstats_and_netback_lines() {
        let n = parse_netstats_line(&netstats("client1", 3, 2))
            .unwrap()
            .unwrap();
        assert_eq!((n.vm.as_str(), n.tag), ("client1", 3));
        assert_eq!(n.counters["tx_frames"], 200);
        assert_eq!(n.counters["copied_frame_to_pool"], 203_000);
        assert!(parse_netstats_line("[c] iperf counters: tx 1").is_none());
        assert!(parse_netstats_line("[c] netstats 3 tx_frames=x")
            .unwrap()
            .is_err());
        assert!(parse_netstats_line("[c] netstats 3 tx_frames")
            .unwrap()
            .is_err());
        assert!(parse_netstats_line("[c] netstats y tx_frames=1")
            .unwrap()
            .is_err());
        let b = parse_backend_line(
            "[driver-domain] netback 2 tx_frames=5 tx_bytes=500 rx_frames=7 copied_to_guest=712 \
             events_sent=3 events_suppressed=1 copied_from_guests=0",
        )
        .unwrap()
        .unwrap();
        assert_eq!((b.guest, b.counters["copied_to_guest"]), (2, 712));
        assert!(parse_backend_line("[driver-domain] netback x a=1")
            .unwrap()
            .is_err());
        assert!(parse_backend_line("[driver-domain] switch: 2 port(s)").is_none());
    }

    #[test]
    fn reasons_come_from_the_counter_differences_of_the_test() {
        let lines: Vec<String> = [
            netstats("client1", 2, 1),
            netstats("client1", 3, 11),
            netstats("server1", 2, 0),
        ]
        .to_vec();
        let stats: Vec<NetStats> = lines
            .iter()
            .map(|l| parse_netstats_line(l).unwrap().unwrap())
            .collect();
        let client = test_delta(&stats, "client1", 1).unwrap();
        assert_eq!((client["tx_frames"], client["events_sent"]), (1000, 100));
        // A mark split over lines is merged.
        let split: Vec<NetStats> = [
            "[g] netstats 2 tx_frames=1 rx_frames=2",
            "[g] netstats 2 copied_app_to_stack=3",
            "[g] netstats 3 tx_frames=11 rx_frames=12",
            "[g] netstats 3 copied_app_to_stack=13",
            "[g] netstats 3 tx_frames=999",
        ]
        .iter()
        .map(|l| parse_netstats_line(l).unwrap().unwrap())
        .collect();
        let d = test_delta(&split, "g", 1).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            (d["tx_frames"], d["rx_frames"], d["copied_app_to_stack"]),
            (10, 10, 10)
        );
        assert!(test_delta(&stats, "server1", 1).is_none(), "no end mark");
        assert!(test_delta(&stats, "client1", 2).is_none());
        // Counters that went backwards (a reconnect) are no difference.
        let mut back = stats[1].counters.clone();
        back.insert("tx_frames".into(), 1);
        assert!(counter_delta(&stats[0].counters, &back).is_none());

        // Guest to guest: client sends 1000 frames of 1000 B (1 000 000 payload bytes), the
        // server receives them.
        let c = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let sender = c(&[
            ("tx_frames", 1000),
            ("tx_bytes", 1_030_000),
            ("events_sent", 100),
            ("events_received", 150),
            ("copied_app_to_stack", 1_000_000),
            ("copied_stack_to_frame", 1_010_000),
            ("copied_frame_to_pool", 1_020_000),
            ("copied_pool_to_frame", 30_000),
        ]);
        let receiver = c(&[
            ("rx_frames", 1000),
            ("rx_bytes", 1_010_000),
            ("events_sent", 200),
            ("events_received", 50),
            ("copied_pool_to_frame", 1_010_000),
            ("copied_frame_to_stack", 1_010_000),
        ]);
        let run = PathRun {
            payload_bytes: 1_000_000,
            sender: Some(sender.clone()),
            receiver: Some(receiver.clone()),
            // The connection carried 2 000 000 frame bytes to the server (copied with their
            // net headers); this test 1 010 000 of them.
            receiver_port: Some(c(&[
                ("rx_bytes", 2_000_000),
                ("copied_to_guest", 2_024_000),
            ])),
            sender_port: None,
            accounting: None,
        };
        let r = run.reasons();
        assert_eq!(r.events_per_frame, Some(0.5));
        assert_eq!(r.bytes_per_notification, Some(2000.0));
        assert_eq!(r.copies["app_to_stack"], 1.0);
        assert_eq!(r.copies["frame_to_pool"], 1.02);
        assert_eq!(
            r.copies["pool_to_frame"], 1.01,
            "the receiver's site, not the sender's"
        );
        // 1.012 copied per frame byte, 1.01 frame bytes per payload byte.
        assert_eq!(r.copies["backend"], 1.0221);
        assert_eq!(r.copies.len(), 6);
        assert_eq!(
            r.copies_per_byte,
            Some(round_to(1.0 + 1.01 + 1.02 + 1.01 + 1.01 + 1.0221, 4))
        );
        assert!(r.pcpu_share.is_empty());

        // Guest to host: only the sender is a guest; the back-end's copy is out of its pool.
        let run = PathRun {
            payload_bytes: 1_000_000,
            sender: Some(sender),
            receiver: None,
            sender_port: Some(c(&[
                ("tx_bytes", 2_000_000),
                ("copied_from_guests", 2_000_000),
            ])),
            receiver_port: None,
            accounting: Some((Accounting::default(), Accounting::default())),
        };
        let r = run.reasons();
        assert_eq!(r.events_per_frame, Some(0.25));
        assert_eq!(r.copies["backend"], 1.03);
        assert_eq!(r.copies.len(), 4);
        assert!(r.pcpu_share.is_empty(), "empty reports have no shares");
        // Nothing counted: nothing claimed.
        let r = PathRun::default().reasons();
        assert_eq!(r, RunReasons::default());
        let r = PathRun {
            payload_bytes: 0,
            receiver: Some(receiver),
            ..PathRun::default()
        }
        .reasons();
        assert_eq!((r.events_per_frame, r.copies_per_byte), (Some(0.25), None));
    }

    #[test]
    fn a_ports_two_netback_lines_merge_and_the_first_connection_wins() {
        let lines = [
            "[dd] netback 2 tx_frames=5 rx_frames=10",
            "[dd] netback 3 tx_frames=7 rx_frames=1",
            "[dd] netback 2 rx_no_buffer=0 rx_held=4",
            "[dd] netback 2 tx_frames=99 rx_frames=99",
            "[dd] netback 2 rx_no_buffer=9 rx_held=9",
        ];
        let ports: Vec<BackendStats> = lines
            .iter()
            .filter_map(|l| parse_backend_line(l))
            .collect::<Result<_, _>>()
            .unwrap();
        let two = merged_backend(&ports, 2).unwrap();
        let get = |k: &str| two.get(k).copied();
        assert_eq!(
            (
                get("tx_frames"),
                get("rx_frames"),
                get("rx_no_buffer"),
                get("rx_held")
            ),
            (Some(5), Some(10), Some(0), Some(4))
        );
        assert_eq!(merged_backend(&ports, 3).unwrap().len(), 2);
        assert_eq!(merged_backend(&ports, 4), None);
    }

    #[test]
    fn the_receivers_drops_and_waits_count_per_thousand_frames_offered() {
        let c = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // 1990 delivered, 10 dropped: 2000 offered; 40 of them waited first.
        let run = PathRun {
            receiver_port: Some(c(&[
                ("rx_frames", 1990),
                ("rx_no_buffer", 10),
                ("rx_held", 40),
            ])),
            ..PathRun::default()
        };
        let r = run.reasons();
        assert_eq!(r.receiver_drops_per_kframe, Some(5.0));
        assert_eq!(r.receiver_waits_per_kframe, Some(20.0));
        let summary = Reasons::of_runs(&[r]).summary();
        assert!(
            summary.contains("receiver per 1000 frames: 5.0 dropped, 20.0 waited"),
            "{summary}"
        );
        // A driver domain from before the holds: drops, no waits. Nothing offered: no figure.
        let run = PathRun {
            receiver_port: Some(c(&[("rx_frames", 995), ("rx_no_buffer", 5)])),
            ..PathRun::default()
        };
        let r = run.reasons();
        assert_eq!(
            (r.receiver_drops_per_kframe, r.receiver_waits_per_kframe),
            (Some(5.0), None)
        );
        let run = PathRun {
            receiver_port: Some(c(&[("rx_frames", 0), ("rx_no_buffer", 0)])),
            ..PathRun::default()
        };
        assert_eq!(run.reasons().receiver_drops_per_kframe, None);
    }

    #[test]
    fn frames_per_ack_come_from_the_receiving_guest_else_the_sending_one() {
        let c = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // The receiver got 300 data frames and answered with 100.
        let run = PathRun {
            receiver: Some(c(&[("rx_frames", 300), ("tx_frames", 100)])),
            sender: Some(c(&[("tx_frames", 999), ("rx_frames", 1)])),
            ..PathRun::default()
        };
        assert_eq!(run.reasons().frames_per_ack, Some(3.0));
        assert_eq!(
            run.reasons().receiver_drops_per_kframe,
            None,
            "no port line"
        );
        // Toward the host only the sender is a guest: its frames sent over those it got.
        let run = PathRun {
            sender: Some(c(&[("tx_frames", 500), ("rx_frames", 200)])),
            ..PathRun::default()
        };
        assert_eq!(run.reasons().frames_per_ack, Some(2.5));
        // No frame back, or no counter: no figure rather than an infinite or made-up one.
        for receiver in [
            c(&[("rx_frames", 300), ("tx_frames", 0)]),
            c(&[("rx_frames", 300)]),
        ] {
            let run = PathRun {
                receiver: Some(receiver),
                ..PathRun::default()
            };
            assert_eq!(run.reasons().frames_per_ack, None);
        }
    }

    #[test]
    fn reasons_over_runs_are_medians_and_the_summary_shows_them() {
        let run = |events: f64, copies: f64, dd: f64| RunReasons {
            events_per_frame: Some(events),
            bytes_per_notification: Some(1000.0 / events),
            copies_per_byte: Some(copies),
            copies: [("backend".to_string(), 1.0)].into(),
            pcpu_share: [("dd".to_string(), dd), ("idle".to_string(), 1.0 - dd)].into(),
            vmid_switches_per_frame: Some(events * 2.0),
            frames_per_ack: Some(copies / 2.0),
            ..RunReasons::default()
        };
        let r = Reasons::of_runs(&[run(0.5, 6.0, 0.4), run(0.1, 6.2, 0.5), run(0.3, 6.1, 0.6)]);
        assert_eq!(r.events_per_frame.as_ref().unwrap().median, 0.3);
        assert!(r.events_per_frame.as_ref().unwrap().spread_over_2x);
        assert!(!r.copies_per_byte.as_ref().unwrap().spread_over_2x);
        assert_eq!(r.pcpu_share["dd"], 0.5);
        assert_eq!(r.copies["backend"], 1.0);
        let text = r.summary();
        assert!(
            text.contains("0.300 events/frame")
                && text.contains("3333 B/notification")
                && text.contains("6.10 copies/B")
                && text.contains("0.600 VMID switches/frame")
                && text.contains("3.05 frames/ACK")
                && text.contains("dd 50%"),
            "{text}"
        );
        let empty = Reasons::of_runs(&[]);
        assert!(empty.is_empty());
        assert!(
            empty.summary().contains("- events/frame") && empty.summary().contains("pCPU share -")
        );
    }

    #[test]
    fn the_flag_rule_looks_at_run_values() {
        assert!(!spread_over_2x(&[10.0]));
        assert!(!spread_over_2x(&[10.0, 20.0]));
        assert!(spread_over_2x(&[10.0, 20.1]));
        assert!(!spread_over_2x(&[0.0, 5.0]), "a zero run is no ratio");
        assert!(!spread_over_2x(&[]));
        assert!(Stat::of_runs(&[1.0, 3.0]).unwrap().spread_over_2x);
        // Sampled runs: the extremes of single samples do not flag, the run medians do.
        let s = Stat::of_sampled_runs(&[vec![1.0, 10.0, 30.0], vec![9.0, 11.0]]).unwrap();
        assert_eq!((s.min, s.max), (1.0, 30.0));
        assert!(!s.spread_over_2x);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["spread_over_2x"], false);
    }

    fn account(vm: &str, tag: u64, exits: u64, ioreqs: u64, virqs: u64) -> String {
        format!(
            "[hv] accounting {tag} vm={vm} run_us=1 exits={exits} hypercalls=0 mmio_exits={ioreqs} \
             ioreqs={ioreqs} virqs={virqs}"
        )
    }

    #[test]
    fn packet_costs_are_the_path_vms_counter_differences_over_the_packets() {
        let lines = vec![
            account("dd", 2, 100, 0, 10),
            account("emu", 2, 50, 40, 1),
            account("bystander", 2, 0, 0, 0),
            account("dd", 3, 300, 0, 30),
            account("emu", 3, 4_050, 4_040, 11),
            account("bystander", 3, 999_999, 0, 0),
        ];
        let reports = accounting_reports(&lines).unwrap();
        let (b, a) = (&reports[&2], &reports[&3]);
        let c = packet_costs(b, a, &["emu", "dd"], 10).unwrap();
        // emu: 4000 exits, 4000 requests, 10 interrupts; dd: 200 exits, 20 interrupts.
        assert_eq!(c.packets, 10);
        assert_eq!((c.exits, c.ioreqs, c.interrupts), (420.0, 400.0, 3.0));
        assert_eq!(c.exits_by_vm["emu"], 400.0);
        assert_eq!(c.exits_by_vm["dd"], 20.0);
        assert!(!c.exits_by_vm.contains_key("bystander"));
        assert!(packet_costs(b, a, &["emu"], 0)
            .unwrap_err()
            .contains("no packets"));
        assert!(packet_costs(b, a, &["ghost"], 1)
            .unwrap_err()
            .contains("ghost"));
        assert!(packet_costs(a, b, &["dd"], 1)
            .unwrap_err()
            .contains("went backwards"));
        // Over runs: medians, min and max of the run values.
        let mut c2 = c.clone();
        c2.exits = 500.0;
        c2.packets = 30;
        c2.exits_by_vm.insert("emu".into(), 480.0);
        let mut c3 = c.clone();
        c3.exits = 380.0;
        let path = PathCosts::of_runs(&[c, c2, c3]);
        let exits = path.exits_per_packet.unwrap();
        assert_eq!((exits.median, exits.min, exits.max), (420.0, 380.0, 500.0));
        assert_eq!(path.packets.unwrap().median, 10.0);
        assert_eq!(path.exits_per_packet_by_vm["emu"], 400.0);
        assert_eq!(PathCosts::of_runs(&[]), PathCosts::default());
    }

    #[test]
    fn served_tests_pair_each_start_with_its_result() {
        let lines = [
            "iperf: server listening on 10.0.2.18:5201",
            "iperf: server 10.0.2.18 <- 10.0.2.16: tcp test started, 3 s, this side receives",
            "iperf: 1 s, 1000 bytes, 0.01 Mbit/s",
            "IPERF server 10.0.2.18 <- 10.0.2.16: tcp 3.00 s, 90000 bytes, 0.24 Mbit/s, receiver",
            "iperf: the sender counted 90000 bytes",
            "iperf: server 10.0.2.18 <- 10.0.2.16: tcp test started, 3 s, this side receives",
            "iperf: server 10.0.2.18 <- 10.0.2.16: test failed: the peer went quiet",
            "iperf: server 10.0.2.18 <- 10.0.2.2: tcp test started, 3 s, this side receives",
            "IPERF server 10.0.2.18 <- 10.0.2.2: tcp 3.00 s, 120000 bytes, 0.32 Mbit/s, receiver",
        ];
        let tests = served_tests(lines).unwrap();
        assert_eq!(tests.len(), 3);
        assert_eq!((tests[0].n, tests[0].peer.as_str()), (1, "10.0.2.16"));
        assert_eq!(tests[0].result.as_ref().unwrap().bytes, Some(90_000));
        assert!(tests[1].result.is_none(), "the failed test has no result");
        assert_eq!((tests[2].n, tests[2].peer.as_str()), (3, "10.0.2.2"));
        assert!((tests[2].result.as_ref().unwrap().mbps - 0.32).abs() < 1e-9);
        let bad = ["IPERF server 1 <- 2: tcp 3.00 s, receiver"];
        assert!(served_tests(bad).is_err());
    }

    #[test]
    fn nic_interrupts_are_bracketed_by_the_counters_lines_around_the_reports() {
        let nic = |n: u64| {
            format!(
                "[driver-domain] driver-domain NIC counters: rx 5 frames / 9 B, tx 1 frames / 2 B, \
                 tx errors 0, interrupts {n}, udp echoed 0, tcp echoed 0 B"
            )
        };
        assert_eq!(nic_interrupts(&nic(1909)), Some(1909));
        assert_eq!(nic_interrupts("[dd] interrupts 5,"), None);
        let lines: Vec<String> = vec![
            nic(3),
            nic(7),
            "[hv] accounting 2 idle_us=0 pcpus=2".into(),
            nic(500),
            "[hv] accounting 3 idle_us=9 pcpus=2".into(),
            nic(1007),
            nic(2000),
        ];
        assert_eq!(nic_interrupts_between(&lines, 2, 3), Some(1000));
        assert_eq!(
            nic_interrupts_between(&lines[2..], 2, 3),
            Some(1007),
            "from boot"
        );
        assert_eq!(
            nic_interrupts_between(&lines[..5], 2, 3),
            None,
            "no line after"
        );
        assert_eq!(nic_interrupts_between(&lines, 4, 5), None);
    }
}
