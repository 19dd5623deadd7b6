//! `electra plot`: the loss and accuracy curves of a run as an SVG beside its metrics.

use crate::io::run_dir::{read_metrics, Metrics};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// The run directory (with metrics.jsonl).
    pub run_dir: PathBuf,
}

const W: f64 = 520.0;
const H: f64 = 300.0;
const PAD: f64 = 48.0;

type Series<'a> = (&'a str, &'a str, fn(&Metrics) -> f64);

/// One panel: several series against the step, on a shared y range, with a legend.
fn panel(svg: &mut String, x0: f64, title: &str, metrics: &[Metrics], series: &[Series]) {
    let steps: Vec<f64> = metrics.iter().map(|m| m.step as f64).collect();
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, f)| metrics.iter().map(f))
        .filter(|v| v.is_finite())
        .collect();
    let (smin, smax) = (steps[0], steps[steps.len() - 1].max(steps[0] + 1.0));
    let vmin = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let vmax = values
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(vmin + 1e-9);
    let x = |s: f64| x0 + PAD + (s - smin) / (smax - smin) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v - vmin) / (vmax - vmin) * (H - 2.0 * PAD);
    let (l, r, t, b) = (x0 + PAD, x0 + W - PAD, PAD, H - PAD);
    let _ = write!(
        svg,
        r##"<g font-family="sans-serif" font-size="12"><text x="{l}" y="20" font-size="14">{title}</text>
<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#444"/>
<text x="{l}" y="{below}" text-anchor="middle">{smin}</text><text x="{r}" y="{below}" text-anchor="end">step {smax}</text>
<text x="{left}" y="{top}" text-anchor="end">{vmax:.3}</text><text x="{left}" y="{b}" text-anchor="end">{vmin:.3}</text>
"##,
        below = b + 16.0,
        left = l - 4.0,
        top = t + 4.0,
    );
    for (i, (name, colour, f)) in series.iter().enumerate() {
        let points: Vec<String> = metrics
            .iter()
            .filter(|m| f(m).is_finite())
            .map(|m| format!("{:.1},{:.1}", x(m.step as f64), y(f(m))))
            .collect();
        let ly = PAD + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>
<text x="{}" y="{ly}" fill="{colour}" text-anchor="end">{name}</text>
"#,
            points.join(" "),
            x0 + W - PAD
        );
    }
    svg.push_str("</g>\n");
}

pub fn run(args: &PlotArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !args.run_dir.is_dir() {
        return Err(format!("{}: no such run directory", args.run_dir.display()).into());
    }
    let metrics = read_metrics(&args.run_dir)?;
    if metrics.is_empty() {
        return Err(format!(
            "{}: metrics.jsonl has no lines to plot",
            args.run_dir.display()
        )
        .into());
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" viewBox="0 0 {} {H}">
<rect width="100%" height="100%" fill="white"/>
"#,
        2.0 * W,
        2.0 * W
    );
    let losses: [Series; 2] = [
        ("generator (MLM)", "#1f77b4", |m| m.gen_loss),
        ("discriminator (BCE)", "#d62728", |m| m.disc_loss),
    ];
    panel(&mut svg, 0.0, "losses", &metrics, &losses);
    let accuracy: [Series; 3] = [
        ("MLM accuracy", "#1f77b4", |m| m.mlm_accuracy),
        ("discriminator accuracy", "#d62728", |m| m.disc_accuracy),
        ("replaced fraction", "#7f7f7f", |m| m.replaced_fraction),
    ];
    panel(&mut svg, W, "accuracy", &metrics, &accuracy);
    svg.push_str("</svg>\n");
    let out = args.run_dir.join("curves.svg");
    crate::io::write_atomic(&out, svg.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
