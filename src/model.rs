//! `sage model` and `sage calibrate`: a real model end to end, and adaptive quantization plans.

use std::path::Path;
use std::sync::Arc;

use sage::plan::{Calibration, Candidate, LayerPlan, PLAN_VERSION, Plan, Sample, Target};
use sage::{AttentionBackend, Error, Result, io};
use sage_candle::eval::{self, Agreement, TestSet};
use sage_candle::minilm::{self, ExactAttention, MiniLm, SageAttention};

use super::{CalibrateArgs, ModelArgs};

/// The models `sage model` and `sage calibrate --model` know.
const MODELS: [&str; 1] = ["minilm"];

fn check_model_name(name: &str) -> Result<()> {
    if MODELS.contains(&name) {
        return Ok(());
    }
    Err(Error::param(
        "model",
        format!("`{name}` is not a model sage runs (minilm)"),
    ))
}

fn load_model(dir: Option<&Path>) -> Result<MiniLm> {
    let dir = dir.map_or_else(minilm::default_model_dir, Path::to_path_buf);
    MiniLm::load(&dir)
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::param("json", e.to_string()))
}

/// One row of `sage model`'s table.
#[derive(serde::Serialize)]
struct ModelRecord {
    model: &'static str,
    backend: &'static str,
    device: String,
    attention: String,
    sentences: usize,
    pairs: usize,
    #[serde(flatten)]
    agreement: Agreement,
    ms: f64,
}

/// `sage model minilm`: embeddings of the test sentences with exact attention (candle, f32) and
/// with each sage setting, compared.
pub fn run(args: &ModelArgs) -> Result<()> {
    check_model_name(&args.name)?;
    let layers = args.settings.layers()?;
    let config = layers.resolve();
    // The plan first: a bad plan file is reported whatever the backend, model or sentences.
    let plan = args.plan.as_deref().map(Plan::load).transpose()?;
    let (backend, note) = sage::open(config.backend)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let model = load_model(args.model_dir.as_deref())?;
    let set = match &args.pairs {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            TestSet::parse(&text, &path.display().to_string())?
        }
        None => TestSet::builtin(),
    };
    // Only the mode that was asked for (flag, environment or config file), or every mode.
    let mut rows: Vec<(String, SageAttention)> = Vec::new();
    let shared: Arc<dyn AttentionBackend> = backend.clone();
    let shared = Some(shared);
    if layers.mode.is_some() || plan.is_none() {
        let variants = match layers.mode {
            Some(_) => vec![eval::Variant {
                label: describe(&config.params),
                params: config.params,
            }],
            None => eval::variants(&config.params),
        };
        for v in variants {
            let att = SageAttention::uniform(v.params, &model.config, shared.clone());
            rows.push((v.label, att));
        }
    }
    if let (Some(plan), Some(path)) = (&plan, &args.plan) {
        let att = SageAttention::from_plan(plan, config.params, &model.config, shared.clone())?;
        rows.push((format!("plan {}", path.display()), att));
    }
    let caps = backend.capabilities();
    let (exact, exact_ms) = eval::embed_all(&model, &set.sentences, &mut ExactAttention)?;
    if !args.json {
        println!(
            "all-MiniLM-L6-v2, {} sentences, {} pairs, sage on {} ({}) against exact f32 attention in candle ({exact_ms:.0} ms)",
            set.sentences.len(),
            set.pairs.len(),
            backend.name(),
            caps.device
        );
        println!(
            "| attention                      | min cos  | mean cos | spearman | max dsim | top-1  | para-unrel |      ms |"
        );
        println!(
            "|--------------------------------|----------|----------|----------|----------|--------|------------|---------|"
        );
    }
    for (label, mut attention) in rows {
        let (embeddings, ms) = eval::embed_all(&model, &set.sentences, &mut attention)?;
        let agreement = Agreement::compare(&set, &exact, &embeddings);
        if args.json {
            let record = ModelRecord {
                model: "all-MiniLM-L6-v2",
                backend: backend.name(),
                device: caps.device.clone(),
                attention: label,
                sentences: set.sentences.len(),
                pairs: set.pairs.len(),
                agreement,
                ms,
            };
            println!("{}", to_json(&record)?);
        } else {
            let a = &agreement;
            println!(
                "| {label:<30} | {:.6} | {:.6} | {:>8.5} | {:>8.2e} | {:>5.1}% | {:>+10.4} | {ms:>7.0} |",
                a.min_cos,
                a.mean_cos,
                a.spearman,
                a.max_sim_diff,
                a.top1 * 100.0,
                a.margin
            );
        }
    }
    Ok(())
}

/// A short label of explicit settings, as the table shows them.
fn describe(p: &sage::AttentionParams) -> String {
    let mut label = p.mode.to_string();
    if p.mode.is_quantized() {
        label.push_str(&format!(" {}", p.granularity));
        // smooth_q only when it differs from the mode's default
        match p.smooth_q {
            Some(false) if p.mode.default_smooth_q() => label.push_str(" no-smooth-q"),
            Some(true) if !p.mode.default_smooth_q() => label.push_str(" +smooth-q"),
            _ => {}
        }
        if p.smooth_v {
            label.push_str(" +smooth-v");
        }
        if p.rotate {
            label.push_str(" +rotate");
        }
    }
    label
}

/// `sage calibrate`: scores every candidate of the target per layer (and head), writes the plan.
pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    if !(args.threshold.is_finite() && (0.0..=1.0).contains(&args.threshold)) {
        return Err(Error::param(
            "threshold",
            format!("{} is not in [0, 1]", args.threshold),
        ));
    }
    let layers = args.settings.layers()?;
    if layers.mode.is_some() {
        eprintln!("note: calibrate tries every mode of the target; the mode setting is not used");
    }
    let config = layers.resolve();
    let (backend, note) = sage::open(config.backend)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let caps = backend.capabilities();
    let target = match &args.target {
        Some(t) => t.parse::<Target>().map_err(|e| Error::param("target", e))?,
        None => Target::from_capabilities(&caps),
    };
    // Numerics are one contract on every backend (ALGORITHM.md), so a plan for another device may
    // be scored here; only modes this backend cannot run are left out.
    let (candidates, missing): (Vec<Candidate>, Vec<Candidate>) = target
        .candidates()
        .into_iter()
        .partition(|c| caps.modes.contains(&c.mode));
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        eprintln!(
            "note: {} cannot run {}; those candidates are left out",
            backend.name(),
            names.join(", ")
        );
    }
    let calibration = Calibration {
        base: config.params,
        candidates,
        threshold: args.threshold,
        per_head: args.per_head,
        target: Some(target),
    };
    let (model_name, named_samples) = match (&args.model, &args.input) {
        (Some(name), _) => {
            check_model_name(name)?;
            (name.clone(), model_samples(args)?)
        }
        (None, Some(input)) => (input.display().to_string(), capture_samples(input)?),
        (None, None) => {
            return Err(Error::param(
                "calibrate",
                "give --model minilm or --input DIR",
            ));
        }
    };
    let heads = named_samples
        .first()
        .and_then(|(_, s)| s.first())
        .map_or(0, |s| s.q.shape().heads);
    let mut plan_layers: Vec<LayerPlan> = Vec::with_capacity(named_samples.len());
    println!(
        "calibrating {model_name} for target {target} on {} ({}), granularity {}, threshold {}",
        backend.name(),
        caps.device,
        calibration.base.granularity,
        args.threshold
    );
    // the kv_block each mode is scored at (ALGORITHM.md Step 6: it changes the result)
    let mut kv: Vec<String> = Vec::new();
    for c in &calibration.candidates {
        let k = calibration
            .candidate_params(*c, &caps)
            .kv_block
            .unwrap_or(caps.default_kv_block_for(c.mode));
        let entry = format!("{} {k}", c.mode);
        if !kv.contains(&entry) {
            kv.push(entry);
        }
    }
    println!("kv_block: {}", kv.join(", "));
    let header: Vec<String> = calibration
        .candidates
        .iter()
        .map(|c| format!("{:>15}", c.to_string()))
        .collect();
    println!("{:<28} {:<15} {}", "layer", "chosen", header.join(" "));
    for (name, samples) in &named_samples {
        if args.per_head && samples.iter().any(|s| s.q.shape().heads != heads) {
            return Err(Error::shape(
                "calibrate --per-head",
                format!("every layer with {heads} heads"),
                format!("`{name}` with {}", samples[0].q.shape().heads),
            ));
        }
        let layer = calibration.calibrate_layer(backend.as_ref(), name, samples)?;
        let scores: Vec<String> = layer
            .candidates
            .iter()
            .map(|c| format!("{:>15.5}", c.score))
            .collect();
        println!(
            "{:<28} {:<15} {}",
            name,
            layer.choice().candidate().to_string(),
            scores.join(" ")
        );
        if let Some(h) = &layer.heads {
            let per_head: Vec<String> = h.iter().map(|c| c.candidate().to_string()).collect();
            println!("{:<28} heads: {}", "", per_head.join(", "));
        }
        plan_layers.push(layer);
    }
    let plan = Plan {
        version: PLAN_VERSION,
        model: model_name,
        target: target.to_string(),
        threshold: args.threshold,
        granularity: calibration.base.granularity,
        heads,
        layers: plan_layers,
    };
    plan.save(&args.out)?;
    println!("plan written to {}", args.out.display());
    Ok(())
}

/// Each layer's q, k, v of the model on the calibration text, under exact attention.
fn model_samples(args: &CalibrateArgs) -> Result<Vec<(String, Vec<Sample>)>> {
    let model = load_model(args.model_dir.as_deref())?;
    let owned;
    let text = match &args.text {
        Some(path) => {
            owned = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            owned.as_str()
        }
        None => eval::CALIBRATION,
    };
    let lines = eval::text_lines(text);
    if lines.is_empty() {
        return Err(Error::param(
            "text",
            "the calibration text has no line to run",
        ));
    }
    let per_layer = model.capture(&lines)?;
    Ok(per_layer
        .into_iter()
        .enumerate()
        .map(|(i, samples)| (format!("layer{i}"), samples))
        .collect())
}

/// One layer per capture file, named after the file.
fn capture_samples(input: &Path) -> Result<Vec<(String, Vec<Sample>)>> {
    let mut out = Vec::new();
    for file in io::list_inputs(input)? {
        let f = io::load_qkv(&file)?;
        let name = file.file_stem().map_or_else(
            || file.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        out.push((
            name,
            vec![Sample {
                q: f.q,
                k: f.k,
                v: f.v,
                sm_scale: f.sm_scale,
            }],
        ));
    }
    Ok(out)
}
