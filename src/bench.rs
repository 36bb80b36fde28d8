//! `sage bench`: TOPS of each mode on resident inputs, timed by the device's own clock, with the
//! same JSON schema as `shared/bench/torch_sdpa.py` so that sage and PyTorch figures from one card
//! share one table and one plot.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::random::{Distribution, Rng, random_qkv};
use crate::{AttentionBackend, AttentionParams, DType, Error, Layout, Mode, Result, Shape};

/// One measurement, in `torch_sdpa.py`'s schema (`impl card B H N D causal dtype ms tops`) plus
/// sage's own fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BenchRecord {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub card: String,
    #[serde(rename = "B")]
    pub batch: usize,
    #[serde(rename = "H")]
    pub heads: usize,
    #[serde(rename = "N")]
    pub seq: usize,
    #[serde(rename = "D")]
    pub head_dim: usize,
    pub causal: bool,
    #[serde(default)]
    pub dtype: String,
    /// End to end (quantization included).
    pub ms: Option<f64>,
    pub tops: Option<f64>,
    /// The attention stage alone, where the backend times it apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_tops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
}

impl BenchRecord {
    fn key(&self) -> (usize, usize, usize, usize, bool) {
        (self.batch, self.heads, self.seq, self.head_dim, self.causal)
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    pub shapes: Vec<[usize; 4]>,
    pub modes: Vec<Mode>,
    pub causal: Vec<bool>,
    /// The options every timed call shares: granularity, kv_block (None: the backend's default for
    /// each mode), smoothing and rotation; [`call_params`] sets the mode and the mask per call.
    pub params: AttentionParams,
    pub dtype: DType,
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
}

/// The parameters of one timed call: the plan's options with this mode and mask (the default
/// softmax scale, no log-sum-exp).
pub fn call_params(plan: &BenchPlan, mode: Mode, causal: bool) -> AttentionParams {
    AttentionParams {
        mode,
        causal,
        sm_scale: None,
        return_lse: false,
        ..plan.params
    }
}

/// Operations of one call: 4·B·H·N²·D, halved for causal (FlashAttention's convention).
pub fn ops(shape: [usize; 4], causal: bool) -> f64 {
    let [b, h, n, d] = shape;
    let full = 4.0 * b as f64 * h as f64 * n as f64 * n as f64 * d as f64;
    if causal { full / 2.0 } else { full }
}

fn tops(ops: f64, ms: f64) -> f64 {
    ops / (ms * 1e-3) / 1e12
}

/// Parses `BxHxNxD,BxHxNxD,...`.
pub fn parse_shapes(s: &str) -> Result<Vec<[usize; 4]>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let dims: Vec<usize> = p
                .trim()
                .to_ascii_lowercase()
                .split('x')
                .map(|x| x.parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::param("shapes", format!("`{p}` is not BxHxNxD")))?;
            match dims[..] {
                [b, h, n, d] => Ok([b, h, n, d]),
                _ => Err(Error::param("shapes", format!("`{p}` is not BxHxNxD"))),
            }
        })
        .collect()
}

/// Measures every (shape, causal, mode) of `plan` on `backend`; `progress` is told after each one.
pub fn run(
    backend: &dyn AttentionBackend,
    plan: &BenchPlan,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BenchRecord>> {
    let caps = backend.capabilities();
    let mut records = Vec::new();
    let mut rng = Rng::new(plan.seed);
    for &shape in &plan.shapes {
        let [b, h, n, d] = shape;
        let s = Shape::new(b, h, n, d);
        let (q, k, v) = random_qkv(
            &mut rng,
            s,
            s,
            plan.dtype,
            Layout::Hnd,
            Distribution::KOutliers,
        )?;
        let (dq, dk, dv) = (
            backend.upload(&q)?,
            backend.upload(&k)?,
            backend.upload(&v)?,
        );
        drop((q, k, v));
        for &causal in &plan.causal {
            for &mode in &plan.modes {
                let label = format!("{}x{}x{}x{} causal={} {}", b, h, n, d, causal as u8, mode);
                if !caps.modes.contains(&mode) {
                    progress(&format!("{label}: not on this device"));
                    continue;
                }
                let params = call_params(plan, mode, causal);
                let t = backend.time_attention(&dq, &dk, &dv, &params, plan.warmup, plan.iters)?;
                let o = ops(shape, causal);
                records.push(BenchRecord {
                    implementation: format!("sage-{}-{}", backend.name(), mode),
                    card: caps.device.clone(),
                    batch: b,
                    heads: h,
                    seq: n,
                    head_dim: d,
                    causal,
                    dtype: plan.dtype.to_string(),
                    ms: Some(t.end_to_end_ms),
                    tops: Some(tops(o, t.end_to_end_ms)),
                    kernel_ms: t.kernel_ms,
                    kernel_tops: t.kernel_ms.map(|ms| tops(o, ms)),
                    backend: Some(backend.name().to_string()),
                    mode: Some(mode.to_string()),
                    clock: Some(t.clock.to_string()),
                });
                progress(&label);
            }
        }
    }
    Ok(records)
}

/// Reads JSON lines (a `torch_sdpa.py --json` file, or an earlier `sage bench --json`).
pub fn read_records(path: &Path) -> Result<Vec<BenchRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Format {
                path: path.display().to_string(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Writes records as JSON lines.
pub fn write_records(path: &Path, records: &[BenchRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::param("json", e.to_string()))?);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A value with `digits` decimals, more when it is small (CPU figures are fractions of a TOPS).
fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(
        || "-".to_string(),
        |v| {
            let digits = if v != 0.0 && v.abs() < 1.0 {
                digits.max(3)
            } else {
                digits
            };
            format!("{v:.digits$}")
        },
    )
}

/// The table: one row per measurement, with its ratio to the same backend's `exact` mode and to each
/// baseline implementation measured on the same problem.
pub fn table(records: &[BenchRecord]) -> String {
    let baselines: Vec<String> = {
        let mut b: Vec<String> = records
            .iter()
            .filter(|r| r.backend.is_none())
            .map(|r| r.implementation.clone())
            .collect();
        b.sort();
        b.dedup();
        b
    };
    let mut by_key: BTreeMap<_, Vec<&BenchRecord>> = BTreeMap::new();
    for r in records {
        by_key.entry(r.key()).or_default().push(r);
    }
    let mut out = String::new();
    out.push_str(&format!(
        "| {:<18} | {:<6} | {:<22} | {:>9} | {:>7} | {:>9} | {:>7} | {:>8} |",
        "B x H x N x D", "causal", "impl", "ms", "TOPS", "kernel ms", "kernel", "vs exact"
    ));
    for b in &baselines {
        out.push_str(&format!(" {:>12} |", format!("vs {b}")));
    }
    out.push('\n');
    out.push_str(&format!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(20),
        "-".repeat(8),
        "-".repeat(24),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(10)
    ));
    for _ in &baselines {
        out.push_str(&format!("{}|", "-".repeat(14)));
    }
    out.push('\n');
    for ((b, h, n, d, causal), rows) in &by_key {
        for r in rows {
            let exact = rows
                .iter()
                .find(|x| {
                    x.backend.is_some()
                        && x.backend == r.backend
                        && x.mode.as_deref() == Some("exact")
                })
                .and_then(|x| x.tops);
            let ratio = |base: Option<f64>| match (r.tops, base) {
                (Some(a), Some(b)) if b > 0.0 && r.backend.is_some() => format!("{:.2}x", a / b),
                _ => "-".to_string(),
            };
            out.push_str(&format!(
                "| {:<18} | {:<6} | {:<22} | {:>9} | {:>7} | {:>9} | {:>7} | {:>8} |",
                format!("{b}x{h}x{n}x{d}"),
                if *causal { "yes" } else { "no" },
                r.implementation,
                fmt_opt(r.ms, 3),
                fmt_opt(r.tops, 1),
                fmt_opt(r.kernel_ms, 3),
                fmt_opt(r.kernel_tops, 1),
                ratio(exact)
            ));
            for base in &baselines {
                let t = rows
                    .iter()
                    .find(|x| &x.implementation == base)
                    .and_then(|x| x.tops);
                out.push_str(&format!(" {:>12} |", ratio(t)));
            }
            out.push('\n');
        }
    }
    out
}

/// An SVG plot of TOPS against N, one line per implementation, head dim and causal setting.
pub fn plot(records: &[BenchRecord], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let draw_err = |e: String| Error::Io {
        path: path.display().to_string(),
        reason: format!("plotting: {e}"),
    };
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        if let Some(t) = r.tops {
            let name = format!(
                "{} D={}{}",
                r.implementation,
                r.head_dim,
                if r.causal { " causal" } else { "" }
            );
            series.entry(name).or_default().push((r.seq as f64, t));
        }
    }
    if series.is_empty() {
        return Err(draw_err("no measurement to plot".into()));
    }
    let max_t = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.15;
    let min_n = series
        .values()
        .flatten()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min);
    let max_n = series.values().flatten().map(|p| p.0).fold(0.0, f64::max);
    let (lo, hi) = if min_n == max_n {
        (min_n / 2.0, max_n * 2.0)
    } else {
        (min_n / 1.3, max_n * 1.3)
    };
    let height = 520 + 22 * series.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let (chart_area, legend_area) = root.split_vertically(520);
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..max_t)
        .map_err(|e| draw_err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("sequence length N (queries = keys)")
        .y_desc("TOPS (4·B·H·N²·D / s, half for causal)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| draw_err(e.to_string()))?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| draw_err(e.to_string()))?;
        // legend below the chart: a colour swatch and the series name per line
        let y = 8 + 22 * i as i32;
        legend_area
            .draw(&Rectangle::new([(80, y), (110, y + 12)], color.filled()))
            .map_err(|e| draw_err(e.to_string()))?;
        legend_area
            .draw(&Text::new(name, (120, y - 2), ("sans-serif", 15)))
            .map_err(|e| draw_err(e.to_string()))?;
    }
    root.present().map_err(|e| draw_err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Granularity;

    #[test]
    fn timed_calls_take_the_plan_options() {
        // (`sage bench --smooth-q` was accepted and measured without smoothing until session 14)
        let plan = BenchPlan {
            shapes: vec![[1, 2, 64, 64]],
            modes: vec![Mode::Int8Fp8],
            causal: vec![true],
            params: AttentionParams {
                granularity: Granularity::PerThread,
                kv_block: Some(64),
                smooth_q: Some(true),
                smooth_v: true,
                rotate: true,
                sm_scale: Some(0.5),
                return_lse: true,
                ..Default::default()
            },
            dtype: DType::F16,
            warmup: 0,
            iters: 1,
            seed: 1,
        };
        let p = call_params(&plan, Mode::Int4Fp8, false);
        assert_eq!(p.mode, Mode::Int4Fp8);
        assert!(!p.causal);
        assert_eq!(p.granularity, Granularity::PerThread);
        assert_eq!(p.kv_block, Some(64));
        assert_eq!(p.smooth_q, Some(true));
        assert!(p.smooth_v && p.rotate);
        assert_eq!((p.sm_scale, p.return_lse), (None, false));
        let off = BenchPlan {
            params: AttentionParams {
                smooth_q: None,
                smooth_v: false,
                rotate: false,
                ..plan.params
            },
            ..plan
        };
        let p = call_params(&off, Mode::Int8Fp8, true);
        assert_eq!(
            (p.smooth_q, p.smooth_v, p.rotate, p.causal),
            (None, false, false, true)
        );
    }

    fn rec(
        implementation: &str,
        backend: Option<&str>,
        mode: Option<&str>,
        tops: f64,
    ) -> BenchRecord {
        BenchRecord {
            implementation: implementation.into(),
            card: "card".into(),
            batch: 1,
            heads: 2,
            seq: 1024,
            head_dim: 64,
            causal: false,
            dtype: "fp16".into(),
            ms: Some(1.0),
            tops: Some(tops),
            kernel_ms: None,
            kernel_tops: None,
            backend: backend.map(String::from),
            mode: mode.map(String::from),
            clock: None,
        }
    }

    #[test]
    fn torch_lines_parse_and_ratios_line_up() {
        let torch = r#"{"impl": "torch-cudnn", "card": "NVIDIA H200", "B": 1, "H": 2, "N": 1024, "D": 64, "causal": false, "dtype": "fp16", "ms": 0.5, "tops": 2.0}"#;
        let t: BenchRecord = serde_json::from_str(torch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.implementation, "torch-cudnn");
        let table = table(&[
            t,
            rec("sage-cuda-int8-fp8", Some("cuda"), Some("int8-fp8"), 4.0),
            rec("sage-cuda-exact", Some("cuda"), Some("exact"), 1.0),
        ]);
        assert!(table.contains("vs torch-cudnn"), "{table}");
        let line = table
            .lines()
            .find(|l| l.contains("int8-fp8"))
            .unwrap_or_default();
        assert!(line.contains("4.00x") && line.contains("2.00x"), "{line}");
        assert!(parse_shapes("1x2x3").is_err());
        assert_eq!(
            parse_shapes("1x2x3x4, 5x6x7x8").unwrap_or_default(),
            vec![[1, 2, 3, 4], [5, 6, 7, 8]]
        );
        assert_eq!(ops([1, 1, 2, 4], true), 32.0);
    }
}
