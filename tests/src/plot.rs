//! The plots of `./run.sh bench`, written by hand as SVG: the scaling plot
//! (`target/bench/scaling.svg`: aggregate guest-to-guest throughput against the number of
//! guest pairs running at once, the median with a min-max bar per pair count, and the
//! per-pair share (median / pairs) dashed), and the paths plot (`target/bench/paths.svg`:
//! throughput per path, one bar per path at its median with a min-max whisker, an empty
//! labelled slot for a path not measured yet).

use std::fmt::Write;

/// One pair count's aggregate throughput, in Mbit/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlotPoint {
    pub pairs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 72.0;
const BOTTOM: f64 = 70.0;
/// The paths plot is taller: its bar names are slanted below the axis.
const PATHS_HEIGHT: f64 = 500.0;
const PATHS_BOTTOM: f64 = 130.0;

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is at least `v`
/// (1 for `v <= 0`): the top of the y axis, in five gridline steps.
pub fn nice_ceil(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|f| f * power)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// Text for SVG: `&`, `<`, `>` and `"` escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(x: f64) -> String {
    if x >= 100.0 || x == x.round() {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The plot as a standalone SVG document. Points are placed by pair count on a log2 axis (1, 2,
/// 4 evenly spaced), sorted; each measured point is one `<circle class="point aggregate">`.
/// With no points the plot says so.
pub fn scaling_svg(points: &[PlotPoint], title: &str, subtitle: &str) -> String {
    let mut points: Vec<PlotPoint> = points
        .iter()
        .copied()
        .filter(|p| p.pairs > 0 && p.median.is_finite())
        .collect();
    points.sort_by_key(|p| p.pairs);
    let mut svg = svg_head(title, subtitle, HEIGHT);
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    if points.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" fill="gray">no scaling figure was measured</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        svg.push_str("</svg>\n");
        return svg;
    }
    let top = nice_ceil(
        points
            .iter()
            .map(|p| p.max.max(p.median))
            .fold(0.0, f64::max)
            * 1.1,
    );
    let y = |v: f64| y0 - (v.max(0.0) / top) * (y0 - y1);
    let (lo, hi) = (
        (points[0].pairs as f64).log2(),
        (points[points.len() - 1].pairs as f64).log2(),
    );
    let x = |pairs: usize| {
        if hi > lo {
            x0 + 40.0 + ((pairs as f64).log2() - lo) / (hi - lo) * (x1 - x0 - 80.0)
        } else {
            (x0 + x1) / 2.0
        }
    };
    // Grid and the y axis labels.
    for i in 0..=5 {
        let v = top * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line class="grid" x1="{x0}" y1="{yy:.1}" x2="{x1}" y2="{yy:.1}" stroke="#ddd"/><text x="{lx}" y="{ty:.1}" text-anchor="end">{}</text>"##,
            label(v),
            yy = y(v),
            lx = x0 - 8.0,
            ty = y(v) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"##
    );
    for p in &points {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(p.pairs),
            y0 + 20.0,
            p.pairs
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">guest pairs running at once</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 25.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">TCP throughput (Mbit/s)</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    // The per-pair share, dashed, under the aggregate.
    let share: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.pairs), y(p.median / p.pairs as f64)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline class="line per-pair" points="{}" fill="none" stroke="#e07b39" stroke-width="2" stroke-dasharray="6 4"/>"##,
        share.join(" ")
    );
    for p in &points {
        let _ = writeln!(
            svg,
            r##"<rect class="point per-pair" x="{:.1}" y="{:.1}" width="8" height="8" fill="#e07b39"><title>{} pair(s): {} Mbit/s per pair</title></rect>"##,
            x(p.pairs) - 4.0,
            y(p.median / p.pairs as f64) - 4.0,
            p.pairs,
            label(p.median / p.pairs as f64)
        );
    }
    // The aggregate: min-max bars, the median line and points with their values.
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.pairs), y(p.median)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline class="line aggregate" points="{}" fill="none" stroke="#2a6fbb" stroke-width="2.5"/>"##,
        line.join(" ")
    );
    for p in &points {
        let px = x(p.pairs);
        let _ = writeln!(
            svg,
            r##"<line class="range" x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#2a6fbb"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#2a6fbb"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#2a6fbb"/>"##,
            y(p.min),
            y(p.max),
            px - 5.0,
            y(p.min),
            px + 5.0,
            y(p.min),
            px - 5.0,
            y(p.max),
            px + 5.0,
            y(p.max),
        );
        let _ = writeln!(
            svg,
            r##"<circle class="point aggregate" cx="{px:.1}" cy="{:.1}" r="5" fill="#2a6fbb"><title>{} pair(s): median {} Mbit/s (min {}, max {})</title></circle><text x="{:.1}" y="{:.1}">{}</text>"##,
            y(p.median),
            p.pairs,
            label(p.median),
            label(p.min),
            label(p.max),
            px + 9.0,
            y(p.median) - 8.0,
            label(p.median)
        );
    }
    // Legend.
    let lx = x0 + 15.0;
    let _ = writeln!(
        svg,
        r##"<line x1="{lx}" y1="{ly}" x2="{lx2}" y2="{ly}" stroke="#2a6fbb" stroke-width="2.5"/><text x="{tx}" y="{ty}">all pairs together (median, min-max)</text>"##,
        ly = TOP - 8.0,
        lx2 = lx + 25.0,
        tx = lx + 32.0,
        ty = TOP - 4.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{lx}" y1="{ly}" x2="{lx2}" y2="{ly}" stroke="#e07b39" stroke-width="2" stroke-dasharray="6 4"/><text x="{tx}" y="{ty}">per pair</text>"##,
        lx = lx + 300.0,
        ly = TOP - 8.0,
        lx2 = lx + 325.0,
        tx = lx + 332.0,
        ty = TOP - 4.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// One path's throughput in the paths plot, in Mbit/s; `None`: not measured (an empty slot,
/// labelled as such, like the emulated NIC before it exists).
#[derive(Clone, Debug, PartialEq)]
pub struct PathBar {
    pub label: String,
    pub figure: Option<(f64, f64, f64)>,
}

/// The start of a plot: the SVG element, a white background, the title and the subtitle.
fn svg_head(title: &str, subtitle: &str, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="38" text-anchor="middle" font-size="11" fill="dimgray">{}</text>"#,
        WIDTH / 2.0,
        escape(subtitle)
    );
    svg
}

/// The paths plot as a standalone SVG document: one `<rect class="bar">` per measured path
/// (height the median, a whisker from min to max) and one `<text class="empty">` per slot
/// without a figure, in the given order.
pub fn paths_svg(bars: &[PathBar], title: &str, subtitle: &str) -> String {
    let mut svg = svg_head(title, subtitle, PATHS_HEIGHT);
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, PATHS_HEIGHT - PATHS_BOTTOM, TOP);
    let top = nice_ceil(
        bars.iter()
            .filter_map(|b| b.figure)
            .map(|(median, _, max)| median.max(max))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.1,
    );
    let y = |v: f64| y0 - (v.max(0.0) / top) * (y0 - y1);
    for i in 0..=5 {
        let v = top * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x0}" y1="{:.1}" x2="{x1}" y2="{:.1}" stroke="gainsboro"/><text x="{}" y="{:.1}" text-anchor="end" fill="dimgray">{}</text>"#,
            y(v),
            y(v),
            x0 - 8.0,
            y(v) + 4.0,
            label(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">Mbit/s (median, min-max)</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    let slot = (x1 - x0) / bars.len().max(1) as f64;
    for (i, bar) in bars.iter().enumerate() {
        let cx = x0 + slot * (i as f64 + 0.5);
        // Slanted: a path's name is wider than its slot.
        let ly = y0 + 14.0;
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="end" font-size="11" transform="rotate(-35 {cx:.1} {ly:.1})">{}</text>"#,
            escape(&bar.label)
        );
        match bar
            .figure
            .filter(|(m, lo, hi)| m.is_finite() && lo.is_finite() && hi.is_finite())
        {
            Some((median, min, max)) => {
                let w = slot * 0.6;
                let _ = writeln!(
                    svg,
                    r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="steelblue"/>"#,
                    cx - w / 2.0,
                    y(median),
                    y0 - y(median)
                );
                let _ = writeln!(
                    svg,
                    r#"<line class="whisker" x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                    y(min),
                    y(max)
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                    y(max.max(median)) - 6.0,
                    label(median)
                );
            }
            None => {
                let _ = writeln!(
                    svg,
                    r#"<text class="empty" x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="gray">not measured</text>"#,
                    y0 - 10.0
                );
            }
        }
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>"#
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(pairs: usize, median: f64) -> PlotPoint {
        PlotPoint {
            pairs,
            median,
            min: median * 0.9,
            max: median * 1.1,
        }
    }

    /// Every `<tag` is closed (`</tag>` or `/>`) in order: a small well-formedness check.
    fn balanced(svg: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = match rest[start..].find('>') {
                Some(e) => start + e,
                None => return false,
            };
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
            }
            rest = &rest[end + 1..];
        }
        stack.is_empty()
    }

    #[test]
    fn one_point_per_pair_count_in_a_well_formed_document() {
        let svg = scaling_svg(
            &[point(4, 300.0), point(1, 120.0), point(2, 200.0)],
            "pairs <at once> & more",
            "sub",
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(balanced(&svg), "{svg}");
        assert_eq!(svg.matches("<circle class=\"point aggregate\"").count(), 3);
        assert_eq!(svg.matches("class=\"point per-pair\"").count(), 3);
        assert!(svg.contains("pairs &lt;at once&gt; &amp; more"));
        for pairs in ["1 pair(s)", "2 pair(s)", "4 pair(s)"] {
            assert!(svg.contains(pairs), "{pairs}");
        }
        // Sorted by pairs along x: 1, 2, 4 left to right, evenly spaced (log2).
        let xs: Vec<f64> = svg
            .match_indices("<circle class=\"point aggregate\" cx=\"")
            .map(|(i, m)| {
                let rest = &svg[i + m.len()..];
                rest[..rest.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        assert!(xs[0] < xs[1] && xs[1] < xs[2], "{xs:?}");
        assert!(((xs[1] - xs[0]) - (xs[2] - xs[1])).abs() < 0.2, "{xs:?}");
    }

    #[test]
    fn single_and_no_points() {
        let svg = scaling_svg(&[point(1, 50.0)], "t", "s");
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(balanced(&svg));
        let svg = scaling_svg(&[], "t", "s");
        assert!(svg.starts_with("<svg") && balanced(&svg));
        assert!(svg.contains("no scaling figure"));
        assert_eq!(svg.matches("<circle").count(), 0);
    }

    #[test]
    fn nice_axis_tops() {
        for (v, top) in [
            (0.0, 1.0),
            (-3.0, 1.0),
            (f64::NAN, 1.0),
            (1.0, 1.0),
            (1.1, 1.2),
            (2.2, 2.5),
            (3.0, 3.0),
            (7.0, 8.0),
            (8.5, 10.0),
            (123.0, 150.0),
            (575.0, 600.0),
            (2400.0, 2500.0),
            (0.03, 0.03),
        ] {
            assert!((nice_ceil(v) - top).abs() < 1e-9, "{v}: {}", nice_ceil(v));
        }
    }

    #[test]
    fn paths_plot_has_a_bar_per_measured_path_and_an_empty_slot_otherwise() {
        let bars = [
            PathBar {
                label: "guest <-> guest".into(),
                figure: Some((1000.0, 900.0, 1100.0)),
            },
            PathBar {
                label: "host -> guest".into(),
                figure: Some((200.0, 100.0, 300.0)),
            },
            PathBar {
                label: "emulated".into(),
                figure: None,
            },
        ];
        let svg = paths_svg(&bars, "t", "s & <x>");
        assert!(
            svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert!(balanced(&svg), "{svg}");
        assert_eq!(svg.matches("class=\"bar\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"whisker\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"empty\"").count(), 1, "{svg}");
        assert!(
            svg.contains("s &amp; &lt;x&gt;") && svg.contains("emulated"),
            "{svg}"
        );
        // The taller bar is the larger median: a smaller y and a larger height.
        let heights: Vec<f64> = svg
            .lines()
            .filter(|l| l.contains("class=\"bar\""))
            .map(|l| {
                let at = l.find("height=\"").unwrap() + 8;
                l[at..].split('"').next().unwrap().parse().unwrap()
            })
            .collect();
        assert!(heights[0] > heights[1] * 4.0, "{heights:?}");
        let none = paths_svg(&bars[2..], "t", "s");
        assert_eq!(none.matches("class=\"bar\"").count(), 0);
        assert!(balanced(&none));
    }
}
