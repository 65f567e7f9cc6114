//! Benchmark results: parsing the `BENCH <name> min=.. median=.. max=.. n=.. freq_hz=..` lines
//! VMs print, combining several runs (the median of the per-run medians), and rendering the table
//! and JSON that `./run.sh bench` produces. Measuring is the VMs' job; this module only reads.

use std::collections::BTreeMap;

use serde::Serialize;

/// One `BENCH` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub vm: String,
    pub name: String,
    pub min: u64,
    pub median: u64,
    pub max: u64,
    pub n: u64,
    pub freq_hz: u64,
}

/// Parses a console line `[vm] BENCH name k=v ...`; `None` for any other line. Unknown keys
/// are ignored; a `BENCH` line missing a required key or with a non-numeric value is an error.
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
        })
    })())
}

/// Every `BENCH` sample of a boot's console.
pub fn collect<'a>(lines: impl IntoIterator<Item = &'a String>) -> Result<Vec<Sample>, String> {
    lines.into_iter().filter_map(|l| parse_line(l)).collect()
}

/// One figure over several runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    pub name: String,
    /// Median over runs of each run's median, in counter ticks.
    pub median_ticks: u64,
    pub min_ticks: u64,
    pub max_ticks: u64,
    /// The median in microseconds (ticks / counter frequency).
    pub median_us: f64,
    pub runs: usize,
    pub samples_per_run: u64,
}

fn median(values: &mut [u64]) -> u64 {
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
            let mut medians: Vec<u64> = runs.iter().map(|s| s.median).collect();
            let median_ticks = median(&mut medians);
            let freq = runs.iter().map(|s| s.freq_hz).max().unwrap_or(0);
            Figure {
                name: name.to_string(),
                median_ticks,
                min_ticks: runs.iter().map(|s| s.min).min().unwrap_or(0),
                max_ticks: runs.iter().map(|s| s.max).max().unwrap_or(0),
                median_us: if freq == 0 {
                    0.0
                } else {
                    median_ticks as f64 * 1e6 / freq as f64
                },
                runs: runs.len(),
                samples_per_run: runs.iter().map(|s| s.n).min().unwrap_or(0),
            }
        })
        .collect()
}

/// The human-readable table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<28} {:>12} {:>10} {:>10} {:>12} {:>5} {:>8}\n",
        "figure", "median ticks", "min", "max", "median us", "runs", "n/run"
    );
    for f in figures {
        out.push_str(&format!(
            "{:<28} {:>12} {:>10} {:>10} {:>12.2} {:>5} {:>8}\n",
            f.name,
            f.median_ticks,
            f.min_ticks,
            f.max_ticks,
            f.median_us,
            f.runs,
            f.samples_per_run
        ));
    }
    out
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
            (s.min, s.median, s.max, s.n, s.freq_hz),
            (1, 50, 900, 10, 62_500_000)
        );
        assert!(parse_line("[g] hello").is_none());
        assert!(parse_line("[hv] sluice hypervisor").is_none());
        assert!(parse_line("BENCH x min=1").is_none(), "needs a VM prefix");
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
        assert_eq!(
            (rt.median_ticks, rt.runs, rt.min_ticks, rt.max_ticks),
            (20, 3, 1, 900)
        );
        assert!((rt.median_us - 0.32).abs() < 1e-9);
        let text = table(&figures);
        assert!(text.lines().count() == 3 && text.contains("rt"));
    }
}
