//! Adaptive quantization (ALGORITHM.md, last section): a plan chooses a mode, with or without
//! `rotate`, per layer and optionally per head. Calibration scores every candidate on sample inputs
//! of a layer with `cos * (1 - rel_l1)` against the exact f64 attention, and the planner takes the
//! fastest candidate on the target that meets the threshold.
//!
//! Plans are JSON files with a `version`; [`Plan::from_json_str`] validates everything a run relies
//! on (known version and modes, threshold in range, one choice per head), and [`Plan::check_model`]
//! refuses a plan made for a model of another layer or head count.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::{AttentionBackend, Capabilities};
use crate::config::{AttentionParams, Granularity, Mode};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reference::reference_attention;
use crate::tensor::Tensor;

/// The plan format this sage writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// The score a candidate gets on one output: `cos * (1 - rel_l1)`, 1 for a perfect output. A
/// non-finite measurement scores -1, so that it meets no threshold and still fits in JSON (which
/// has no NaN).
pub fn score(m: &Metrics) -> f64 {
    let s = m.cos * (1.0 - m.rel_l1);
    if s.is_finite() { s } else { -1.0 }
}

/// One setting a plan can choose for a layer or a head. `smooth_q` is the mode's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub mode: Mode,
    pub rotate: bool,
}

impl Candidate {
    /// `base` with this candidate's mode and rotation, and the mode's own `smooth_q` default.
    pub fn params(self, base: &AttentionParams) -> AttentionParams {
        AttentionParams {
            mode: self.mode,
            rotate: self.rotate,
            smooth_q: None,
            ..*base
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rotate {
            write!(f, "{}+rotate", self.mode)
        } else {
            write!(f, "{}", self.mode)
        }
    }
}

/// The device a plan is made for: it decides which modes are fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Cpu,
    Wgpu,
    /// A CUDA device of compute capability `major.minor`.
    Cuda {
        major: u32,
        minor: u32,
    },
}

impl Target {
    /// The target of a backend, from its capabilities (a CUDA device names its `sm_XY`).
    pub fn from_capabilities(caps: &Capabilities) -> Target {
        match caps.backend {
            "cuda" => caps
                .device
                .rsplit("sm_")
                .next()
                .and_then(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    parse_sm(&digits)
                })
                // a device string without its architecture: assume the newest kind we know
                .unwrap_or(Target::Cuda { major: 9, minor: 0 }),
            "wgpu" => Target::Wgpu,
            _ => Target::Cpu,
        }
    }

    /// The concrete modes fastest first, every mode the target runs and `exact` last.
    ///
    /// - CUDA sm_90 and newer: `int8-fp8`, `int8-fp16`, `exact`. INT4 `mma.sync` is emulated on
    ///   Hopper (about 25x slower than INT8, ALGORITHM.md "Modes"), so `int4-fp8` is never chosen.
    /// - CUDA sm_89: `int4-fp8` (INT4 mma at twice the INT8 rate), `int8-fp8`, `int8-fp16`, `exact`.
    /// - CUDA sm_80/86: `int8-fp16`, `exact` (no FP8 mma before sm_89; the backend runs no other mode).
    /// - wgpu: `int4-fp8`, `int8-fp8`, `int8-fp16`, `exact` (BENCHMARKS.md: int4-fp8 about 6% above
    ///   int8-fp8 on an H100 through Vulkan; int8-fp16 decodes no FP8 but moves twice the V bytes).
    /// - CPU: `int8-fp16`, `int8-fp8`, `int4-fp8`, `exact`, as `sage bench --backend cpu` measures
    ///   the reference implementation (49.6, 51.5, 54.1 and 69.4 ms at 1x4x1024x64 on 2 threads):
    ///   the CPU has no INT4 or FP8 arithmetic, so fewer bits only add decoding work there.
    pub fn speed_order(self) -> Vec<Mode> {
        match self {
            Target::Cuda { major, .. } if major >= 9 => {
                vec![Mode::Int8Fp8, Mode::Int8Fp16, Mode::Exact]
            }
            Target::Cuda { major: 8, minor } if minor >= 9 => {
                vec![Mode::Int4Fp8, Mode::Int8Fp8, Mode::Int8Fp16, Mode::Exact]
            }
            Target::Cuda { .. } => vec![Mode::Int8Fp16, Mode::Exact],
            Target::Wgpu => vec![Mode::Int4Fp8, Mode::Int8Fp8, Mode::Int8Fp16, Mode::Exact],
            Target::Cpu => vec![Mode::Int8Fp16, Mode::Int8Fp8, Mode::Int4Fp8, Mode::Exact],
        }
    }

    /// The `kv_block` the target's backend runs `mode` with when none is set (ALGORITHM.md Step 6:
    /// the result depends on it): 128 for `int8-fp8` on CUDA sm_90 (the Hopper kernel's default,
    /// kernels/ABI.md; its wgmma code is sm_90a only, so newer devices run the mma.sync kernel), 64
    /// everywhere else.
    pub fn kv_block(self, mode: Mode) -> usize {
        match self {
            Target::Cuda { major: 9, minor: 0 } if mode == Mode::Int8Fp8 => 128,
            _ => 64,
        }
    }

    /// The candidates in the order the planner tries them: each mode of [`Target::speed_order`]
    /// without, then with `rotate` (the Hadamard transform costs D log D adds per row).
    pub fn candidates(self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for mode in self.speed_order() {
            out.push(Candidate {
                mode,
                rotate: false,
            });
            if mode.is_quantized() {
                out.push(Candidate { mode, rotate: true });
            }
        }
        out
    }
}

fn parse_sm(digits: &str) -> Option<Target> {
    // "90" -> 9.0, "89" -> 8.9, "100" -> 10.0, "120" -> 12.0
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(Target::Cuda {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cpu => f.write_str("cpu"),
            Target::Wgpu => f.write_str("wgpu"),
            Target::Cuda { major, minor } => write!(f, "cuda-sm{major}{minor}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let bad = || {
            format!("`{s}` is not a target (cpu, wgpu, cuda-sm80, cuda-sm86, cuda-sm89, cuda-sm90)")
        };
        match lower.as_str() {
            "cpu" => Ok(Target::Cpu),
            "wgpu" => Ok(Target::Wgpu),
            _ => {
                let digits = lower
                    .strip_prefix("cuda-sm_")
                    .or_else(|| lower.strip_prefix("cuda-sm"))
                    .or_else(|| lower.strip_prefix("sm_"))
                    .ok_or_else(bad)?;
                let digits = digits.trim_end_matches('a');
                parse_sm(digits).ok_or_else(bad)
            }
        }
    }
}

/// What a plan says of a layer or one head: the setting and the score it had in calibration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub mode: Mode,
    pub rotate: bool,
    /// `cos * (1 - rel_l1)`, the worst over the calibration samples.
    pub score: f64,
}

impl Choice {
    pub fn candidate(&self) -> Candidate {
        Candidate {
            mode: self.mode,
            rotate: self.rotate,
        }
    }
}

/// One layer of a plan: the layer-wide choice, per-head choices when calibrated per head, and the
/// score of every candidate that was tried (for people reading the file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    /// `layer0`.. for a model, the capture's file name for `sage calibrate --input`.
    pub name: String,
    pub mode: Mode,
    pub rotate: bool,
    pub score: f64,
    /// One choice per query head, when the plan was made with `--per-head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<Choice>>,
    /// Every candidate tried on this layer, with its layer-wide score, in the order tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Choice>,
}

impl LayerPlan {
    /// The layer-wide choice.
    pub fn choice(&self) -> Choice {
        Choice {
            mode: self.mode,
            rotate: self.rotate,
            score: self.score,
        }
    }
}

/// A plan: a choice per layer (and head) for one model on one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always [`PLAN_VERSION`] in a plan this sage accepts.
    pub version: u32,
    /// What was calibrated: `minilm`, or the directory of captures.
    pub model: String,
    /// The device the speed order was taken from (`cpu`, `wgpu`, `cuda-sm90`, ...).
    pub target: String,
    /// The score every choice had to meet, in [0, 1].
    pub threshold: f64,
    /// The granularity calibration ran with, and that a run of the plan uses.
    pub granularity: Granularity,
    /// Query heads per layer.
    pub heads: usize,
    pub layers: Vec<LayerPlan>,
}

fn check_choice(c: &Choice, what: &str) -> std::result::Result<(), String> {
    if c.mode == Mode::Auto {
        return Err(format!(
            "{what}: mode `auto` is not a plan's choice (int4-fp8, int8-fp8, int8-fp16, exact)"
        ));
    }
    if c.rotate && !c.mode.is_quantized() {
        return Err(format!(
            "{what}: `rotate` applies to the quantized modes only, not to `{}`",
            c.mode
        ));
    }
    if !(c.score.is_finite() && (-1.0..=1.0).contains(&c.score)) {
        return Err(format!("{what}: score {} is not in [-1, 1]", c.score));
    }
    Ok(())
}

impl Plan {
    /// Parses and validates plan JSON; `origin` names the file in errors. Never panics, whatever
    /// the text: the fuzz target `fuzz_plan` holds it to that.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Plan> {
        let bad = |reason: String| Error::Format {
            path: origin.to_string(),
            reason,
        };
        // The version first, so that a plan of another version gets that message and not a list
        // of fields this sage does not know.
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a plan: not valid JSON: {e}")))?;
        let version = value
            .get("version")
            .ok_or_else(|| bad("not a plan: no `version` field".into()))?;
        match version.as_u64() {
            Some(v) if v == u64::from(PLAN_VERSION) => {}
            Some(v) => {
                return Err(bad(format!(
                    "plan version {v} is not supported (this sage reads version {PLAN_VERSION})"
                )));
            }
            None => {
                return Err(bad(format!(
                    "plan `version` is {version}, not a whole number (this sage reads version {PLAN_VERSION})"
                )));
            }
        }
        let plan: Plan =
            serde_json::from_value(value).map_err(|e| bad(format!("not a valid plan: {e}")))?;
        plan.validate().map_err(bad)?;
        Ok(plan)
    }

    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Plan::from_json_str(&text, &path.display().to_string())
    }

    /// The plan as pretty JSON (what [`Plan::save`] writes).
    pub fn to_json_string(&self) -> Result<String> {
        self.validate().map_err(|reason| Error::Format {
            path: "plan".into(),
            reason,
        })?;
        serde_json::to_string_pretty(self).map_err(|e| Error::Format {
            path: "plan".into(),
            reason: e.to_string(),
        })
    }

    /// Writes the plan as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_json_string()?;
        std::fs::write(path, text + "\n").map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Every rule a run relies on; the message names the layer and head at fault.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version != PLAN_VERSION {
            return Err(format!(
                "plan version {} is not supported (this sage reads version {PLAN_VERSION})",
                self.version
            ));
        }
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(format!(
                "threshold {} is out of range: a score threshold is in [0, 1]",
                self.threshold
            ));
        }
        if let Err(e) = self.target.parse::<Target>() {
            return Err(format!("target: {e}"));
        }
        if self.heads == 0 {
            return Err("`heads` is 0: a layer has at least one head".into());
        }
        if self.layers.is_empty() {
            return Err("the plan has no layers".into());
        }
        let mut names = HashSet::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let what = format!("layer {i} (`{}`)", layer.name);
            if layer.name.is_empty() {
                return Err(format!("layer {i} has an empty name"));
            }
            if !names.insert(layer.name.as_str()) {
                return Err(format!("{what}: the name appears twice"));
            }
            check_choice(&layer.choice(), &what)?;
            if let Some(heads) = &layer.heads {
                if heads.len() != self.heads {
                    return Err(format!(
                        "{what}: {} head choices, but the plan is for {} heads per layer",
                        heads.len(),
                        self.heads
                    ));
                }
                for (h, c) in heads.iter().enumerate() {
                    check_choice(c, &format!("{what}, head {h}"))?;
                }
            }
            for c in &layer.candidates {
                check_choice(c, &format!("{what}, candidate {}", c.candidate()))?;
            }
        }
        Ok(())
    }

    /// Refuses a plan made for a model of another shape.
    pub fn check_model(&self, model: &str, layers: usize, heads: usize) -> Result<()> {
        if self.layers.len() != layers || self.heads != heads {
            return Err(Error::shape(
                "plan",
                format!("{layers} layers of {heads} heads, as model {model} has"),
                format!(
                    "a plan for {} layers of {} heads (made for `{}`)",
                    self.layers.len(),
                    self.heads,
                    self.model
                ),
            ));
        }
        Ok(())
    }

    /// The setting of each head of layer `layer`: the per-head choices, or the layer's for all.
    pub fn head_candidates(&self, layer: usize) -> Option<Vec<Candidate>> {
        let l = self.layers.get(layer)?;
        Some(match &l.heads {
            Some(heads) => heads.iter().map(Choice::candidate).collect(),
            None => vec![l.choice().candidate(); self.heads],
        })
    }
}

/// One calibration input of a layer: its Q, K, V and softmax scale.
#[derive(Clone, Debug)]
pub struct Sample {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub sm_scale: Option<f32>,
}

/// How to calibrate: the base parameters (granularity, kv_block, causal), the candidates in the
/// order they are tried, the threshold, whether to choose per head too, and the device the plan is
/// for: when `base` sets no kv_block, each mode is scored at the kv_block `target` runs it with (if
/// the calibrating backend accepts that value; else at that backend's default).
#[derive(Clone, Debug)]
pub struct Calibration {
    pub base: AttentionParams,
    pub candidates: Vec<Candidate>,
    pub threshold: f64,
    pub per_head: bool,
    pub target: Option<Target>,
}

/// The first of `scored` (in trial order) that meets `threshold`; when none does, `exact` (or the
/// best-scoring candidate if `exact` was not tried), so that a plan always says something runnable.
pub fn choose(scored: &[Choice], threshold: f64) -> Option<Choice> {
    scored
        .iter()
        .find(|c| c.score >= threshold)
        .or_else(|| scored.iter().find(|c| c.mode == Mode::Exact))
        .or_else(|| scored.iter().max_by(|a, b| a.score.total_cmp(&b.score)))
        .copied()
}

impl Calibration {
    /// The parameters `cand` is scored with on a backend of capabilities `caps`.
    pub fn candidate_params(&self, cand: Candidate, caps: &Capabilities) -> AttentionParams {
        let mut params = cand.params(&self.base);
        if params.kv_block.is_none() {
            params.kv_block = self
                .target
                .map(|t| t.kv_block(cand.mode))
                .filter(|kv| caps.kv_blocks_for(cand.mode).contains(kv));
        }
        params
    }

    /// Scores every candidate on every sample of one layer against the exact f64 attention and
    /// chooses. A layer's (or head's) score for a candidate is its worst over the samples: a plan
    /// should hold for every input it was calibrated on, not only on average.
    pub fn calibrate_layer(
        &self,
        backend: &dyn AttentionBackend,
        name: &str,
        samples: &[Sample],
    ) -> Result<LayerPlan> {
        let first = samples
            .first()
            .ok_or_else(|| Error::param("calibration", format!("layer `{name}` has no sample")))?;
        let heads = first.q.shape().heads;
        let mut references = Vec::with_capacity(samples.len());
        for s in samples {
            if s.q.shape().heads != heads {
                return Err(Error::shape(
                    "calibration",
                    format!("every sample of layer `{name}` with {heads} heads"),
                    s.q.shape().heads,
                ));
            }
            let params = AttentionParams {
                sm_scale: s.sm_scale.or(self.base.sm_scale),
                ..self.base
            };
            references.push(reference_attention(&s.q, &s.k, &s.v, &params)?.out);
        }
        let caps = backend.capabilities();
        let mut layer_scores = Vec::with_capacity(self.candidates.len());
        // [candidate][head]
        let mut head_scores = Vec::with_capacity(self.candidates.len());
        for &cand in &self.candidates {
            let mut worst = f64::INFINITY;
            let mut worst_head = vec![f64::INFINITY; heads];
            for (s, reference) in samples.iter().zip(&references) {
                let params = AttentionParams {
                    sm_scale: s.sm_scale.or(self.base.sm_scale),
                    ..self.candidate_params(cand, &caps)
                };
                let out = backend
                    .attention(&s.q, &s.k, &s.v, &params)?
                    .out
                    .to_f32_hnd();
                worst = worst.min(score(&Metrics::compare(&out, reference)));
                if self.per_head {
                    // HND: [batch, heads, seq, d]; one head's rows of every batch
                    let shape = s.q.shape();
                    let rows = shape.seq * shape.head_dim;
                    for b in 0..shape.batch {
                        for (h, w) in worst_head.iter_mut().enumerate() {
                            let at = (b * heads + h) * rows;
                            let m =
                                Metrics::compare(&out[at..at + rows], &reference[at..at + rows]);
                            *w = w.min(score(&m));
                        }
                    }
                }
            }
            layer_scores.push(Choice {
                mode: cand.mode,
                rotate: cand.rotate,
                score: worst,
            });
            head_scores.push(worst_head);
        }
        let choice = choose(&layer_scores, self.threshold)
            .ok_or_else(|| Error::param("calibration", "no candidate modes to choose from"))?;
        let head_choices = if self.per_head {
            let mut out = Vec::with_capacity(heads);
            for h in 0..heads {
                let scored: Vec<Choice> = layer_scores
                    .iter()
                    .zip(&head_scores)
                    .map(|(c, hs)| Choice { score: hs[h], ..*c })
                    .collect();
                out.extend(choose(&scored, self.threshold));
            }
            Some(out)
        } else {
            None
        };
        Ok(LayerPlan {
            name: name.to_string(),
            mode: choice.mode,
            rotate: choice.rotate,
            score: choice.score,
            heads: head_choices,
            candidates: layer_scores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use crate::random::{Distribution, Rng, random_qkv};
    use crate::tensor::{DType, Layout, Shape};

    fn plan() -> Plan {
        let c = |mode, rotate, score| Choice {
            mode,
            rotate,
            score,
        };
        Plan {
            version: PLAN_VERSION,
            model: "minilm".into(),
            target: "cuda-sm90".into(),
            threshold: 0.99,
            granularity: Granularity::PerThread,
            heads: 2,
            layers: vec![
                LayerPlan {
                    name: "layer0".into(),
                    mode: Mode::Int8Fp8,
                    rotate: false,
                    score: 0.995,
                    heads: Some(vec![
                        c(Mode::Int8Fp8, false, 0.996),
                        c(Mode::Int8Fp16, true, 0.999),
                    ]),
                    candidates: vec![c(Mode::Int8Fp8, false, 0.995), c(Mode::Exact, false, 1.0)],
                },
                LayerPlan {
                    name: "layer1".into(),
                    mode: Mode::Exact,
                    rotate: false,
                    score: 0.9999,
                    heads: None,
                    candidates: vec![],
                },
            ],
        }
    }

    fn reason(text: &str) -> String {
        match Plan::from_json_str(text, "p.json") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_plan_round_trips_through_json() {
        let p = plan();
        let text = p.to_json_string().unwrap();
        assert_eq!(Plan::from_json_str(&text, "p.json").unwrap(), p);
        assert_eq!(
            p.head_candidates(1).unwrap(),
            vec![
                Candidate {
                    mode: Mode::Exact,
                    rotate: false
                };
                2
            ]
        );
    }

    #[test]
    fn the_example_plan_loads() {
        // written by `sage calibrate --input` on two real-qkv captures, per head, for sm_89
        let text = include_str!("../tests/data/plan.json");
        let p = Plan::from_json_str(text, "tests/data/plan.json").unwrap();
        assert_eq!((p.layers.len(), p.heads), (2, 12));
        let heads = p.head_candidates(0).unwrap();
        assert!(heads.iter().any(|c| c.mode == Mode::Int4Fp8));
        assert!(heads.iter().any(|c| c.mode == Mode::Int8Fp16));
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        let good = serde_json::to_value(plan()).unwrap();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            reason(&v.to_string())
        };
        let e = edit(&|v| v["version"] = 2.into());
        assert!(e.contains("version 2 is not supported"), "{e}");
        let e = edit(&|v| {
            v.as_object_mut().unwrap().remove("version");
        });
        assert!(e.contains("no `version`"), "{e}");
        let e = edit(&|v| v["layers"][1]["mode"] = "int9-fp8".into());
        assert!(e.contains("int9-fp8") && e.contains("int8-fp8"), "{e}");
        let e = edit(&|v| v["layers"][1]["mode"] = "auto".into());
        assert!(e.contains("auto") && e.contains("layer 1"), "{e}");
        let e = edit(&|v| v["threshold"] = 1.5.into());
        assert!(e.contains("threshold 1.5 is out of range"), "{e}");
        let e = edit(&|v| v["heads"] = 3.into());
        assert!(e.contains("2 head choices") && e.contains("3 heads"), "{e}");
        let e = edit(&|v| v["layers"][1]["name"] = "layer0".into());
        assert!(e.contains("twice"), "{e}");
        let e = edit(&|v| v["layers"][1]["rotate"] = true.into());
        assert!(e.contains("rotate"), "{e}");
        let e = edit(&|v| v["target"] = "tpu".into());
        assert!(e.contains("tpu"), "{e}");
        let e = edit(&|v| v["layers"] = serde_json::json!([]));
        assert!(e.contains("no layers"), "{e}");
        let e = edit(&|v| v["extra"] = 1.into());
        assert!(e.contains("extra"), "{e}");
        assert!(reason("{").contains("not valid JSON"));
        assert!(reason("[]").contains("no `version`"));
        let e = plan().check_model("minilm", 6, 12).unwrap_err().to_string();
        assert!(
            e.contains("6 layers of 12 heads") && e.contains("2 layers of 2"),
            "{e}"
        );
    }

    #[test]
    fn targets_rank_modes_as_documented() {
        let hopper: Target = "cuda-sm90".parse().unwrap();
        assert!(!hopper.speed_order().contains(&Mode::Int4Fp8));
        assert_eq!(hopper.speed_order()[0], Mode::Int8Fp8);
        assert_eq!(
            "sm_89".parse::<Target>().unwrap().speed_order()[0],
            Mode::Int4Fp8
        );
        assert_eq!(
            "cuda-sm80".parse::<Target>().unwrap().speed_order(),
            vec![Mode::Int8Fp16, Mode::Exact]
        );
        for t in [
            "cpu",
            "wgpu",
            "cuda-sm86",
            "cuda-sm89",
            "cuda-sm90",
            "cuda-sm100",
        ] {
            let target: Target = t.parse().unwrap();
            assert_eq!(target.to_string(), t);
            assert_eq!(target.speed_order().last(), Some(&Mode::Exact));
        }
        let caps = CpuBackend::new().capabilities();
        assert_eq!(Target::from_capabilities(&caps), Target::Cpu);
        let mut cuda = caps.clone();
        cuda.backend = "cuda";
        cuda.device = "NVIDIA H100 80GB HBM3 (sm_90)".into();
        assert_eq!(
            Target::from_capabilities(&cuda),
            Target::Cuda { major: 9, minor: 0 }
        );
        cuda.device = "NVIDIA L40S (sm_89)".into();
        assert_eq!(
            Target::from_capabilities(&cuda),
            Target::Cuda { major: 8, minor: 9 }
        );
    }

    #[test]
    fn candidates_are_scored_at_the_targets_kv_block() {
        let hopper: Target = "cuda-sm90".parse().unwrap();
        let mut cal = Calibration {
            base: AttentionParams::default(),
            candidates: hopper.candidates(),
            threshold: 0.9,
            per_head: false,
            target: Some(hopper),
        };
        let cpu = CpuBackend::new().capabilities();
        let kv = |cal: &Calibration, mode, caps: &Capabilities| {
            cal.candidate_params(
                Candidate {
                    mode,
                    rotate: false,
                },
                caps,
            )
            .kv_block
        };
        // the Hopper kernel's 128 for int8-fp8, 64 for the mma.sync modes
        assert_eq!(kv(&cal, Mode::Int8Fp8, &cpu), Some(128));
        assert_eq!(kv(&cal, Mode::Int8Fp16, &cpu), Some(64));
        assert_eq!(
            kv(&cal, Mode::Int8Fp8, &cpu),
            Some(hopper.kv_block(Mode::Int8Fp8))
        );
        for other in ["cuda-sm89", "cuda-sm100", "cpu"] {
            assert_eq!(other.parse::<Target>().unwrap().kv_block(Mode::Int8Fp8), 64);
        }
        // a backend that cannot run 128: its own default
        let mut only64 = cpu.clone();
        only64.kv_blocks = vec![64];
        assert_eq!(kv(&cal, Mode::Int8Fp8, &only64), None);
        // a kv_block the user set wins; no target: the backend's default
        cal.base.kv_block = Some(64);
        assert_eq!(kv(&cal, Mode::Int8Fp8, &cpu), Some(64));
        cal.base.kv_block = None;
        cal.target = None;
        assert_eq!(kv(&cal, Mode::Int8Fp8, &cpu), None);
    }

    #[test]
    fn the_planner_takes_the_fastest_candidate_that_meets_the_threshold() {
        let c = |mode, score| Choice {
            mode,
            rotate: false,
            score,
        };
        let scored = [
            c(Mode::Int4Fp8, 0.90),
            c(Mode::Int8Fp8, 0.98),
            c(Mode::Exact, 0.9999),
        ];
        assert_eq!(choose(&scored, 0.95).unwrap().mode, Mode::Int8Fp8);
        assert_eq!(choose(&scored, 0.85).unwrap().mode, Mode::Int4Fp8);
        assert_eq!(choose(&scored, 0.99).unwrap().mode, Mode::Exact);
        // nothing meets it: exact anyway
        assert_eq!(choose(&scored, 1.0).unwrap().mode, Mode::Exact);

        let s = Shape::new(1, 2, 40, 32);
        let (q, k, v) = random_qkv(
            &mut Rng::new(7),
            s,
            s,
            DType::F32,
            Layout::Nhd,
            Distribution::KOutliers,
        )
        .unwrap();
        let cal = Calibration {
            base: AttentionParams::default(),
            candidates: Target::Cpu.candidates(),
            threshold: 0.9,
            per_head: true,
            target: Some(Target::Cpu),
        };
        let sample = Sample {
            q,
            k,
            v,
            sm_scale: None,
        };
        let layer = cal
            .calibrate_layer(&CpuBackend::new(), "l", &[sample])
            .unwrap();
        assert_eq!(layer.candidates.len(), 7);
        assert_eq!(
            layer.mode,
            Mode::Int8Fp16,
            "fastest on the cpu, and accurate"
        );
        assert_eq!(layer.heads.as_ref().map(Vec::len), Some(2));
        let exact = layer.candidates.last().unwrap();
        assert!(
            exact.mode == Mode::Exact && exact.score > 0.9999,
            "{exact:?}"
        );
    }
}
