//! Charts as inline SVG, drawn on the server: line charts and stacked bars with a grid, axis
//! labels and a legend. Sized by a `viewBox` so they scale to the page width (a phone, a
//! printed A4 page); coloured by CSS classes `c0`..`c5` from the page's stylesheet.

use std::fmt::Write as _;

use crate::layout::escape;

/// The drawing's coordinate space; the page scales it.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 34.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Most x labels written under a chart; the others are skipped evenly.
const MAX_X_LABELS: usize = 8;
/// Series colours available in the stylesheet.
const COLOURS: usize = 6;

/// One named series of values, one per x position; `None` is a gap (no sample).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// How the y axis writes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `1.2M`, `340k`.
    Count,
    Percent,
    Watts,
    /// Whole amounts of a currency, with this prefix (`$`) or suffix code.
    Money {
        prefix: &'static str,
    },
}

fn format_value(value: f64, unit: Unit) -> String {
    let compact = |v: f64| {
        let a = v.abs();
        if a >= 1e9 {
            format!("{:.1}G", v / 1e9)
        } else if a >= 1e6 {
            format!("{:.1}M", v / 1e6)
        } else if a >= 1e4 {
            format!("{:.0}k", v / 1e3)
        } else if a >= 1e3 {
            format!("{:.1}k", v / 1e3)
        } else if a >= 10.0 || a == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    match unit {
        Unit::Count => compact(value),
        Unit::Percent => format!("{value:.0}%"),
        Unit::Watts => format!("{} W", compact(value)),
        Unit::Money { prefix } => format!("{prefix}{}", compact(value)),
    }
}

/// A round number at or above `max` (1, 2, 2.5 or 5 × a power of ten) for the top of the axis.
fn nice_max(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let magnitude = 10_f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn frame(out: &mut String, label: &str, top: f64, unit: Unit, x_labels: &[String], slot: f64) {
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\"><title>{}</title>",
        escape(label),
        escape(label)
    );
    let plot_height = HEIGHT - TOP - BOTTOM;
    for i in 0..=4 {
        let value = top * f64::from(i) / 4.0;
        let y = TOP + plot_height * (1.0 - f64::from(i) / 4.0);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&format_value(value, unit))
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\"/>",
        HEIGHT - BOTTOM
    );
    let every = x_labels.len().div_ceil(MAX_X_LABELS).max(1);
    for (i, label) in x_labels.iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let x = LEFT + slot * (i as f64 + 0.5);
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - 10.0,
            escape(label)
        );
    }
}

fn legend(series: &[Series]) -> String {
    let mut out = String::from("<div class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            "<span><i class=\"c{}\"></i>{}</span>",
            i % COLOURS,
            escape(&s.name)
        );
    }
    out.push_str("</div>");
    out
}

fn empty(caption: &str, message: &str) -> String {
    format!(
        "<figure><figcaption>{}</figcaption><p class=\"empty\">{}</p></figure>",
        escape(caption),
        escape(message)
    )
}

/// Lines over shared x positions (days, months, sample times).
pub fn line_chart(caption: &str, x_labels: &[String], series: &[Series], unit: Unit) -> String {
    let points = x_labels.len();
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(f64::NAN, |a, &b| if b.is_finite() { a.max(b) } else { a });
    if points == 0 || series.is_empty() || max.is_nan() {
        return empty(caption, "No data for this period yet.");
    }
    let top = match unit {
        Unit::Percent => 100.0,
        _ => nice_max(max),
    };
    let slot = (WIDTH - LEFT - RIGHT) / points as f64;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let mut out = format!("<figure><figcaption>{}</figcaption>", escape(caption));
    frame(&mut out, caption, top, unit, x_labels, slot);
    for (i, s) in series.iter().enumerate() {
        // A gap in the samples breaks the line, so missing data is never drawn as zero.
        let mut path = String::new();
        let mut pen_down = false;
        for (x_index, value) in s.values.iter().take(points).enumerate() {
            match value {
                Some(v) if v.is_finite() => {
                    let x = LEFT + slot * (x_index as f64 + 0.5);
                    let y = TOP + plot_height * (1.0 - (v / top).clamp(0.0, 1.0));
                    let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                _ => pen_down = false,
            }
        }
        let _ = write!(
            out,
            "<path class=\"line c{}\" d=\"{}\"><title>{}</title></path>",
            i % COLOURS,
            path.trim_end(),
            escape(&s.name)
        );
        // Single points (a one-day period) would not show as a line: mark every point.
        if s.values.iter().flatten().count() <= 2 {
            for (x_index, value) in s.values.iter().take(points).enumerate() {
                if let Some(v) = value {
                    let x = LEFT + slot * (x_index as f64 + 0.5);
                    let y = TOP + plot_height * (1.0 - (v / top).clamp(0.0, 1.0));
                    let _ = write!(
                        out,
                        "<circle class=\"c{}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"/>",
                        i % COLOURS
                    );
                }
            }
        }
    }
    out.push_str("</svg>");
    out.push_str(&legend(series));
    out.push_str("</figure>");
    out
}

/// Bars stacked per x position (input and output tokens per day).
pub fn stacked_bars(caption: &str, x_labels: &[String], stacks: &[Series], unit: Unit) -> String {
    let points = x_labels.len();
    let totals: Vec<f64> = (0..points)
        .map(|i| {
            stacks
                .iter()
                .filter_map(|s| s.values.get(i).copied().flatten())
                .filter(|v| v.is_finite() && *v > 0.0)
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    if points == 0 || stacks.is_empty() || max <= 0.0 {
        return empty(caption, "No data for this period yet.");
    }
    let top = nice_max(max);
    let slot = (WIDTH - LEFT - RIGHT) / points as f64;
    let bar = (slot * 0.7).max(1.0);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let mut out = format!("<figure><figcaption>{}</figcaption>", escape(caption));
    frame(&mut out, caption, top, unit, x_labels, slot);
    for (x_index, x_label) in x_labels.iter().enumerate() {
        let mut base = 0.0;
        for (i, s) in stacks.iter().enumerate() {
            let Some(v) = s.values.get(x_index).copied().flatten() else {
                continue;
            };
            if !(v.is_finite() && v > 0.0) {
                continue;
            }
            let y_top = TOP + plot_height * (1.0 - ((base + v) / top).min(1.0));
            let y_bottom = TOP + plot_height * (1.0 - (base / top).min(1.0));
            let x = LEFT + slot * x_index as f64 + (slot - bar) / 2.0;
            let _ = write!(
                out,
                "<rect class=\"c{}\" x=\"{x:.1}\" y=\"{y_top:.1}\" width=\"{bar:.1}\" \
                 height=\"{:.1}\"><title>{}: {}</title></rect>",
                i % COLOURS,
                (y_bottom - y_top).max(0.0),
                escape(x_label),
                escape(&format!("{} {}", s.name, format_value(v, unit)))
            );
            base += v;
        }
    }
    out.push_str("</svg>");
    out.push_str(&legend(stacks));
    out.push_str("</figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2_100.0), 2_500.0);
        assert_eq!(nice_max(41_000.0), 50_000.0);
    }

    #[test]
    fn series_names_are_escaped_and_gaps_break_the_line() {
        let svg = line_chart(
            "GPU <0>",
            &[
                "a".to_owned(),
                "b".to_owned(),
                "c".to_owned(),
                "d".to_owned(),
            ],
            &[Series {
                name: "<script>x</script>".to_owned(),
                values: vec![Some(1.0), None, Some(3.0), Some(4.0)],
            }],
            Unit::Percent,
        );
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        // Two pen-downs: one before the gap, one after.
        let start = svg.find(" d=\"").expect("a path") + 4;
        let end = start + svg[start..].find('"').expect("closed");
        assert_eq!(svg[start..end].matches('M').count(), 2, "{svg}");
        assert_eq!(svg[start..end].matches('L').count(), 1, "{svg}");
    }

    #[test]
    fn no_data_says_so_instead_of_drawing_zero() {
        let html = line_chart("Power", &[], &[], Unit::Watts);
        assert!(html.contains("No data"), "{html}");
        let html = line_chart(
            "Power",
            &["a".to_owned()],
            &[Series {
                name: "GPU 0".to_owned(),
                values: vec![None],
            }],
            Unit::Watts,
        );
        assert!(html.contains("No data"), "{html}");
    }
}
