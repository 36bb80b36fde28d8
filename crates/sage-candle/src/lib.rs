//! sage-candle: SageAttention2 for candle, and a real model to show what it costs end to end.
//!
//! - [`sage_attention`]: a candle custom op over q, k, v of shape `(batch, seq, heads, head_dim)`
//!   (candle-flash-attn's layout, sage's NHD) in f16, bf16 or f32. Host tensors run on sage-core's
//!   CPU backend or any [`sage_core::AttentionBackend`] given in [`SageParams`]; with the `cuda`
//!   feature, CUDA tensors run sage-cuda on candle's own stream.
//! - [`minilm::MiniLm`]: all-MiniLM-L6-v2 (6-layer BERT sentence embeddings) whose attention is
//!   pluggable: exact, sage with a mode per layer or head ([`minilm::SageAttention`], from a
//!   [`sage_core::Plan`]), or a recorder of every layer's q, k, v for calibration.
//! - [`eval`]: the comparison with exact attention (embedding cosine, ranking agreement of pairs).

#[cfg(feature = "cuda")]
mod cuda;
pub mod eval;
pub mod minilm;
pub mod op;
pub mod tokenizer;

pub use candle_core as candle;
pub use op::{SageParams, sage_attention};
