//! Hand-written SVG: the heatmap of `inspect` and the throughput plot of `bench`.

use std::fmt::Write;

/// Width of one heatmap cell, px.
const CELL_W: f64 = 46.0;
/// Height of one heatmap cell, px.
const CELL_H: f64 = 30.0;
/// Room for titles and labels around a chart, px.
const MARGIN: f64 = 60.0;

/// Viridis at five stops, low to high; colour-blind safe and monotone in lightness, as the
/// paper's figures read.
const VIRIDIS: [(f64, f64, f64); 5] = [
    (68.0, 1.0, 84.0),
    (59.0, 82.0, 139.0),
    (33.0, 145.0, 140.0),
    (94.0, 201.0, 98.0),
    (253.0, 231.0, 37.0),
];

/// Line colours of the plot, one per series (Tableau 10).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn colour(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grid of values, one row per layer and one column per head.
pub struct Heatmap {
    /// Title above the grid.
    pub title: String,
    /// What the rows are.
    pub row_label: &'static str,
    /// What the columns are.
    pub col_label: &'static str,
    /// Row names.
    pub rows: Vec<String>,
    /// Column names.
    pub cols: Vec<String>,
    /// `values[row][col]`.
    pub values: Vec<Vec<f64>>,
}

/// The heatmap as an SVG document, each cell labelled with its value, with a colour bar.
pub fn heatmap(h: &Heatmap) -> String {
    let finite = h.values.iter().flatten().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = finite
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + f64::EPSILON);
    let (x0, y0) = (MARGIN, MARGIN);
    let width = x0 + CELL_W * h.cols.len() as f64 + 2.0 * MARGIN;
    let height = y0 + CELL_H * h.rows.len() as f64 + MARGIN;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-size="14">{}</text>"#,
        y0 - 32.0,
        escape(&h.title)
    );
    for (c, name) in h.cols.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + CELL_W * (c as f64 + 0.5),
            y0 - 6.0,
            escape(name)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-style="italic">{}</text>"#,
        x0 + CELL_W * h.cols.len() as f64 / 2.0,
        y0 + CELL_H * h.rows.len() as f64 + 20.0,
        h.col_label
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-style="italic" transform="rotate(-90 {} {})">{}</text>"#,
        x0 - 36.0,
        y0 + CELL_H * h.rows.len() as f64 / 2.0,
        x0 - 36.0,
        y0 + CELL_H * h.rows.len() as f64 / 2.0,
        h.row_label
    );
    for (r, name) in h.rows.iter().enumerate() {
        let y = y0 + CELL_H * r as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + CELL_H * 0.65,
            escape(name)
        );
        for (c, &v) in h.values[r].iter().enumerate() {
            let t = (v - lo) / (hi - lo);
            let x = x0 + CELL_W * c as f64;
            let ink = if t > 0.6 { "black" } else { "white" };
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="{}"><title>{} {name}, {} {c}: {v}</title></rect>"#,
                colour(t),
                h.row_label,
                h.col_label
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle" fill="{ink}" font-size="10">{}</text>"#,
                x + CELL_W / 2.0,
                y + CELL_H * 0.62,
                cell_text(v)
            );
        }
    }
    // Colour bar, low at the bottom.
    let bar_x = x0 + CELL_W * h.cols.len() as f64 + 16.0;
    let bar_h = CELL_H * h.rows.len() as f64;
    const STEPS: usize = 32;
    for i in 0..STEPS {
        let t = i as f64 / (STEPS - 1) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{bar_x}" y="{}" width="14" height="{}" fill="{}"/>"#,
            y0 + bar_h * (1.0 - (i + 1) as f64 / STEPS as f64),
            bar_h / STEPS as f64 + 0.5,
            colour(t)
        );
    }
    for (v, y) in [(hi, y0 + 8.0), (lo, y0 + bar_h)] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{y}">{}</text>"#,
            bar_x + 18.0,
            cell_text(v)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn cell_text(v: f64) -> String {
    if !v.is_finite() {
        "–".to_string()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line of the plot.
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points, x increasing.
    pub points: Vec<(f64, f64)>,
}

/// A line plot with a log2 x axis (sequence lengths) and a linear y axis from 0.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    const PLOT_W: f64 = 520.0;
    const PLOT_H: f64 = 320.0;
    const LEGEND_W: f64 = 260.0;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let y_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let (lx_lo, lx_hi) = (x_lo.max(1.0).log2(), x_hi.max(2.0).log2());
    let span = (lx_hi - lx_lo).max(1.0);
    let (x0, y0) = (MARGIN + 20.0, MARGIN);
    let px = |x: f64| x0 + (x.max(1.0).log2() - lx_lo) / span * PLOT_W;
    let py = |y: f64| y0 + PLOT_H - y / y_hi * PLOT_H;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        x0 + PLOT_W + LEGEND_W,
        y0 + PLOT_H + MARGIN
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-size="14">{}</text>"#,
        y0 - 24.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#888"/>"##
    );
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{x}</text>"#,
            px(x),
            y0 + PLOT_H + 14.0
        );
    }
    const Y_TICKS: usize = 5;
    for i in 0..=Y_TICKS {
        let y = y_hi / 1.1 * i as f64 / Y_TICKS as f64;
        let (x1, gy, tx, ty) = (x0 + PLOT_W, py(y), x0 - 4.0, py(y) + 4.0);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" x2="{x1}" y1="{gy}" y2="{gy}" stroke="#eee"/><text x="{tx}" y="{ty}" text-anchor="end">{}</text>"##,
            crate::common::num(y)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x0 + PLOT_W / 2.0,
        y0 + PLOT_H + 32.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
        x0 - 52.0,
        y0 + PLOT_H / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let dash = if i >= PALETTE.len() {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let points: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>"#,
            points.join(" ")
        );
        let ly = y0 + 14.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{2}" y="{3}">{4}</text>"#,
            x0 + PLOT_W + 12.0,
            x0 + PLOT_W + 32.0,
            x0 + PLOT_W + 36.0,
            ly + 4.0,
            escape(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_the_first_stop_to_the_last() {
        assert_eq!(colour(0.0), "#440154");
        assert_eq!(colour(1.0), "#fde725");
        assert_eq!(colour(f64::NAN), "#440154");
    }

    #[test]
    fn a_heatmap_has_one_cell_per_value() {
        let svg = heatmap(&Heatmap {
            title: "t <x>".into(),
            row_label: "layer",
            col_label: "head",
            rows: vec!["0".into(), "1".into()],
            cols: vec!["0".into(), "1".into(), "2".into()],
            values: vec![vec![0.0, 0.5, 1.0], vec![0.2, f64::NAN, 0.9]],
        });
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(svg.contains("t &lt;x&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
