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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(vm: &str, name: &str, median: u64) -> String {
        format!("[{vm}] BENCH {name} min=1 median={median} max=900 n=10 freq_hz=62500000 (x)")
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
}
