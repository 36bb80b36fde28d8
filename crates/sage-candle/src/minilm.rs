//! all-MiniLM-L6-v2 (sentence-transformers): a 6-layer BERT (hidden 384, 12 heads of 32) whose
//! mean-pooled, L2-normalised last hidden state is the sentence embedding. The forward pass is
//! written here on candle with the attention call pluggable ([`Attention`]): exact softmax attention
//! in f32, sage with a mode per layer (or per head), or a recorder of each layer's q, k, v.
//!
//! Sentences run one at a time (batch 1, no padding): sage attention has no padding mask, and a
//! padded batch with a mask gives the same embeddings as running each sentence alone anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{D, DType as CandleDType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use sage_core::plan::Plan;
use sage_core::{AttentionBackend, AttentionParams, Error, Layout, Result};
use serde::Deserialize;

use crate::op::{SageParams, sage_attention};
use crate::tokenizer::WordPiece;

/// Tokens per sentence at most, as sentence-transformers runs this model (`max_seq_length`).
pub const MAX_TOKENS: usize = 256;

/// The environment variable that points at the model directory.
pub const MODEL_DIR_ENV: &str = "SAGE_MODEL_DIR";

/// Where `scripts/fetch-minilm.sh` puts the model: `$SAGE_MODEL_DIR`, else `~/.cache/sage/minilm`.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("sage").join("minilm")
}

/// The fields of the model's `config.json` this forward pass uses.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A model's attention: called once per layer with q, k, v of shape `(1, seq, heads, head_dim)`
/// (NHD, contiguous), returning the attention output of the same shape.
pub trait Attention {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor>;
}

/// Plain softmax attention in f32 on candle: the baseline every sage run is compared with.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactAttention;

impl Attention for ExactAttention {
    fn attend(
        &mut self,
        _layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        exact_attention(q, k, v)
    }
}

/// softmax(Q Kᵀ / sqrt(D)) V of NHD tensors, in f32.
pub fn exact_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    // NHD -> HND so that the matmuls batch over heads
    let hnd = |t: &Tensor| t.to_dtype(CandleDType::F32)?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (hnd(q)?, hnd(k)?, hnd(v)?);
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

/// Sage attention with one setting per layer and head.
#[derive(Clone)]
pub struct SageAttention {
    /// `[layer][head]`: the parameters of each head.
    pub heads: Vec<Vec<AttentionParams>>,
    /// The backend for host tensors (`None`: the CPU backend).
    pub backend: Option<Arc<dyn AttentionBackend>>,
}

impl SageAttention {
    /// `params` in every layer and head.
    pub fn uniform(
        params: AttentionParams,
        config: &BertConfig,
        backend: Option<Arc<dyn AttentionBackend>>,
    ) -> Self {
        SageAttention {
            heads: vec![vec![params; config.num_attention_heads]; config.num_hidden_layers],
            backend,
        }
    }

    /// The choices of `plan`, which must be for this model's layer and head counts, on top of
    /// `base` (kv_block, smooth_v, ...); the plan's granularity replaces `base`'s, and `smooth_q`
    /// is each mode's default, as in calibration.
    pub fn from_plan(
        plan: &Plan,
        base: AttentionParams,
        config: &BertConfig,
        backend: Option<Arc<dyn AttentionBackend>>,
    ) -> Result<Self> {
        plan.check_model(
            "all-MiniLM-L6-v2",
            config.num_hidden_layers,
            config.num_attention_heads,
        )?;
        let base = AttentionParams {
            granularity: plan.granularity,
            ..base
        };
        let heads = (0..config.num_hidden_layers)
            .filter_map(|l| plan.head_candidates(l))
            .map(|layer| layer.iter().map(|c| c.params(&base)).collect())
            .collect();
        Ok(SageAttention { heads, backend })
    }

    fn params(&self, attention: AttentionParams) -> SageParams {
        SageParams {
            attention,
            layout: Layout::Nhd,
            backend: self.backend.clone(),
        }
    }
}

impl Attention for SageAttention {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(heads) = self.heads.get(layer) else {
            candle_core::bail!("sage attention: no setting for layer {layer}");
        };
        let n_heads = q.dim(2)?;
        if heads.len() != n_heads {
            candle_core::bail!(
                "sage attention: layer {layer} has {n_heads} heads, its setting {}",
                heads.len()
            );
        }
        // One call per run of consecutive heads that share a setting (one call for a uniform layer).
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n_heads {
            let mut end = start + 1;
            while end < n_heads && heads[end] == heads[start] {
                end += 1;
            }
            let len = end - start;
            let part = if len == n_heads {
                sage_attention(q, k, v, &self.params(heads[start]))?
            } else {
                sage_attention(
                    &q.narrow(2, start, len)?,
                    &k.narrow(2, start, len)?,
                    &v.narrow(2, start, len)?,
                    &self.params(heads[start]),
                )?
            };
            parts.push(part);
            start = end;
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Tensor::cat(&parts, 2)
    }
}

/// Records each layer's q, k, v (for calibration) and answers with exact attention, so that
/// later layers see the model's own activations.
#[derive(Default)]
pub struct Recorder {
    /// `[layer]` -> the (q, k, v) of every call, NHD f32.
    pub layers: Vec<Vec<(Tensor, Tensor, Tensor)>>,
}

impl Attention for Recorder {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Vec::new);
        }
        self.layers[layer].push((q.clone(), k.clone(), v.clone()));
        exact_attention(q, k, v)
    }
}

struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// all-MiniLM-L6-v2 with its tokenizer.
pub struct MiniLm {
    pub config: BertConfig,
    tokenizer: WordPiece,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<BertLayer>,
    device: Device,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn format_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl MiniLm {
    /// Loads `config.json`, `model.safetensors` and `vocab.txt` from `dir` onto the CPU. A missing
    /// directory or file says how to fetch the model.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, Device::Cpu)
    }

    /// [`MiniLm::load`] onto `device` (a candle CUDA device with the `cuda` feature, say): the
    /// forward pass then runs there, sage's attention included.
    pub fn load_on(dir: &Path, device: Device) -> Result<Self> {
        for file in ["config.json", "model.safetensors", "vocab.txt"] {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    reason: format!(
                        "no such file: the all-MiniLM-L6-v2 model is not in {} (run scripts/fetch-minilm.sh, or point --model-dir or {MODEL_DIR_ENV} at it)",
                        dir.display()
                    ),
                });
            }
        }
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| io_err(&config_path, e))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| format_err(&config_path, e))?;
        if config.hidden_act != "gelu" {
            return Err(format_err(
                &config_path,
                format!(
                    "hidden_act `{}`: this forward pass implements `gelu` (erf)",
                    config.hidden_act
                ),
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(format_err(
                &config_path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            ));
        }
        let tokenizer = WordPiece::from_file(&dir.join("vocab.txt"))?;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|e| io_err(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, CandleDType::F32, &device)
            .map_err(|e| format_err(&weights_path, e))?;
        Self::from_var_builder(config, tokenizer, vb, device)
            .map_err(|e| format_err(&weights_path, e))
    }

    fn from_var_builder(
        config: BertConfig,
        tokenizer: WordPiece,
        vb: VarBuilder,
        device: Device,
    ) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let e = vb.pp("embeddings");
        let word = candle_nn::embedding(config.vocab_size, h, e.pp("word_embeddings"))?;
        let position = candle_nn::embedding(
            config.max_position_embeddings,
            h,
            e.pp("position_embeddings"),
        )?;
        let token_type =
            candle_nn::embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let embed_norm = candle_nn::layer_norm(h, eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(BertLayer {
                query: candle_nn::linear(h, h, a.pp("self.query"))?,
                key: candle_nn::linear(h, h, a.pp("self.key"))?,
                value: candle_nn::linear(h, h, a.pp("self.value"))?,
                attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                attn_norm: candle_nn::layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                intermediate: candle_nn::linear(
                    h,
                    config.intermediate_size,
                    l.pp("intermediate.dense"),
                )?,
                output: candle_nn::linear(config.intermediate_size, h, l.pp("output.dense"))?,
                out_norm: candle_nn::layer_norm(h, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(MiniLm {
            config,
            tokenizer,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            device,
        })
    }

    /// The token ids of `text`: `[CLS] ... [SEP]`, at most [`MAX_TOKENS`].
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, MAX_TOKENS.min(self.config.max_position_embeddings))
    }

    /// The last hidden state `(1, seq, hidden)` of one tokenized sentence.
    pub fn forward(
        &self,
        ids: &[u32],
        attention: &mut dyn Attention,
    ) -> candle_core::Result<Tensor> {
        let n = ids.len();
        if n == 0 || n > self.config.max_position_embeddings {
            candle_core::bail!(
                "minilm: {n} tokens; the model takes 1 to {}",
                self.config.max_position_embeddings
            );
        }
        let (heads, head_dim) = (self.config.num_attention_heads, self.config.head_dim());
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let positions = Tensor::arange(0u32, n as u32, &self.device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let x = (self.word.forward(&ids)?
            + self.position.forward(&positions)?
            + self.token_type.forward(&types)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            // (1, n, hidden) -> (1, n, heads, head_dim): heads split as reshape(seq, 12, 32)
            let split = |lin: &Linear| lin.forward(&x)?.reshape((1, n, heads, head_dim));
            let (q, k, v) = (
                split(&layer.query)?,
                split(&layer.key)?,
                split(&layer.value)?,
            );
            let context = attention
                .attend(i, &q, &k, &v)?
                .reshape((1, n, heads * head_dim))?;
            let context = context.to_dtype(CandleDType::F32)?;
            x = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&context)? + &x)?)?;
            let inner = layer.intermediate.forward(&x)?.gelu_erf()?;
            x = layer
                .out_norm
                .forward(&(layer.output.forward(&inner)? + &x)?)?;
        }
        Ok(x)
    }

    /// The sentence embedding of `text`: mean over its tokens of the last hidden state, L2-normalised.
    pub fn embed(&self, text: &str, attention: &mut dyn Attention) -> Result<Vec<f32>> {
        let ids = self.tokenize(text);
        let mut embed = || -> candle_core::Result<Vec<f32>> {
            let hidden = self.forward(&ids, attention)?;
            let mean = hidden.mean(1)?.squeeze(0)?;
            let norm = mean.sqr()?.sum_all()?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec1::<f32>()
        };
        embed().map_err(model_err)
    }

    /// Every layer's q, k, v on `texts` under exact attention, as calibration samples
    /// (`[layer][text]`, NHD f32).
    pub fn capture(&self, texts: &[&str]) -> Result<Vec<Vec<sage_core::plan::Sample>>> {
        let mut recorder = Recorder::default();
        for text in texts {
            let ids = self.tokenize(text);
            self.forward(&ids, &mut recorder).map_err(model_err)?;
        }
        recorder
            .layers
            .into_iter()
            .map(|calls| {
                calls
                    .into_iter()
                    .map(|(q, k, v)| {
                        let t = |x: &Tensor| crate::op::to_sage(x, Layout::Nhd).map_err(model_err);
                        Ok(sage_core::plan::Sample {
                            q: t(&q)?,
                            k: t(&k)?,
                            v: t(&v)?,
                            sm_scale: None,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// A candle error of the model as sage's error type.
pub fn model_err(e: candle_core::Error) -> Error {
    Error::Model {
        model: "all-MiniLM-L6-v2".into(),
        reason: e.to_string(),
    }
}
