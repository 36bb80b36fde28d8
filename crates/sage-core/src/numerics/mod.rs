//! The steps of ALGORITHM.md as plain functions on one head's rows. The CPU backend composes them;
//! the GPU backends implement the same steps in their own languages and are checked against these.

pub mod fp8;
pub mod hadamard;
pub mod quant;
pub mod smooth;

/// log2(e): logits are taken to base 2 so that softmax uses exp2 (ALGORITHM.md Step 4).
pub const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln(2): turns a base-2 log-sum-exp back into the natural one.
pub const LN_2: f32 = std::f32::consts::LN_2;

/// Queries per `smooth_q` mean (ALGORITHM.md Step 2).
pub const Q_SMOOTH_BLOCK: usize = 128;

/// Head dims kernels run natively; smaller ones are zero-padded up to the next (ALGORITHM.md, Shapes).
pub const PADDED_HEAD_DIMS: [usize; 2] = [64, 128];

/// The largest head dim any backend accepts.
pub const MAX_HEAD_DIM: usize = 128;

/// The head dim a kernel computes with: the next of [`PADDED_HEAD_DIMS`], or `None` beyond the largest.
pub fn padded_head_dim(d: usize) -> Option<usize> {
    PADDED_HEAD_DIMS.iter().copied().find(|&p| d <= p)
}
