//! `training.svg`: training loss and the dev metrics against steps, from `metrics.jsonl`.
//!
//! Written by hand rather than with plotters: plotters' text needs a font backend (a TTF
//! file or system fonts) that a headless CI machine may lack, and this chart is two panels of
//! polylines, axes and labels.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

const W: f64 = 720.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

type Series = (String, Vec<(f64, f64)>);

/// Reads `metrics.jsonl` and writes `training.svg` beside it.
pub fn write_training_svg(output: &Path) -> Result<()> {
    let log = output.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut loss = Vec::new();
    let mut evals: Vec<Series> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        if let Some(m) = v["eval"].as_object() {
            for (k, val) in m {
                let Some(val) = val.as_f64() else { continue };
                match evals.iter_mut().find(|(name, _)| name == k) {
                    Some((_, pts)) => pts.push((step, val)),
                    None => evals.push((k.clone(), vec![(step, val)])),
                }
            }
        }
    }
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * H
    );
    panel(
        &mut svg,
        0.0,
        "training loss",
        &[("loss".to_string(), loss)],
    );
    panel(&mut svg, H, "dev metrics", &evals);
    svg.push_str("</svg>\n");
    crate::model::cross_encoder::write_atomic(&output.join("training.svg"), svg.as_bytes())
}

fn panel(svg: &mut String, top: f64, title: &str, series: &[Series]) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{title}</text>",
        W / 2.0,
        top + 18.0
    );
    if pts.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>",
            W / 2.0,
            top + H / 2.0
        );
        return;
    }
    let (x0, x1) = bounds(pts.iter().map(|p| p.0));
    let (y0, y1) = bounds(pts.iter().map(|p| p.1));
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| top + H - PAD + 12.0 - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let (left, right, bottom, upper) = (sx(x0), sx(x1), sy(y0), sy(y1));
    let _ = writeln!(svg, "<path d=\"M{left},{upper} L{left},{bottom} L{right},{bottom}\" stroke=\"black\" fill=\"none\"/>");
    for (v, y) in [(y0, bottom), (y1, upper)] {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.3}</text>",
            left - 4.0,
            y + 4.0
        );
    }
    for (v, x) in [(x0, left), (x1, right)] {
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{v:.0}</text>",
            bottom + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>",
        W / 2.0,
        bottom + 30.0
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let d: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" stroke=\"{color}\" fill=\"none\" stroke-width=\"1.5\"/>",
            d.join(" ")
        );
        if p.len() == 1 {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                sx(p[0].0),
                sy(p[0].1)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            right - 90.0,
            upper + 14.0 * i as f64
        );
    }
}

/// The range of `values`, widened when empty or flat so that scaling never divides by zero.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if hi - lo > 1e-12 {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    }
}
