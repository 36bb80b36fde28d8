//! Seeded random inputs for tests, benchmarks and `sage run --shape`: a small, fast generator
//! (SplitMix64 + Box-Muller) so that a seed printed by a failing test reproduces it anywhere.

use crate::error::Result;
use crate::tensor::{DType, Layout, Shape, Tensor};

/// SplitMix64: 64-bit state, passes BigCrush, and needs nothing but wrapping arithmetic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A seed from the clock: fresh inputs each run (print it so a failure can be replayed).
    pub fn fresh_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// How the random inputs are distributed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// i.i.d. standard normal Q, K, V.
    Normal,
    /// Normal plus per-channel biases in K (and a smaller one in Q): the channel-wise outliers that
    /// K smoothing exists for (the SageAttention papers' observation on real models).
    KOutliers,
}

/// Random Q (`q_shape`) and K, V (`kv_shape`) of one dtype and layout.
pub fn random_qkv(
    rng: &mut Rng,
    q_shape: Shape,
    kv_shape: Shape,
    dtype: DType,
    layout: Layout,
    dist: Distribution,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = q_shape.head_dim;
    let (q_bias, k_bias): (Vec<f32>, Vec<f32>) = match dist {
        Distribution::Normal => (vec![0.0; d], vec![0.0; d]),
        Distribution::KOutliers => (
            (0..d).map(|_| 0.5 * rng.normal()).collect(),
            (0..d).map(|_| 4.0 * rng.normal()).collect(),
        ),
    };
    let mut make = |shape: Shape, bias: &[f32]| {
        let vals = normal_values(rng.next_u64(), shape.numel(), bias);
        Tensor::from_f32_hnd(&vals, shape, dtype, layout)
    };
    let q = make(q_shape, &q_bias)?;
    let k = make(kv_shape, &k_bias)?;
    let v = make(kv_shape, &vec![0.0; d])?;
    Ok((q, k, v))
}

/// `n` values `normal + bias[i % bias.len()]`, drawn in chunks of `CHUNK` values, chunk `c` from its
/// own generator seeded with `seed + c` (SplitMix64 decorrelates consecutive seeds), so the values
/// depend on the seed only, not on how many threads drew them. Benchmark inputs run to 10^8-10^9
/// values: the chunks are spread over the machine's cores.
fn normal_values(seed: u64, n: usize, bias: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut vals = vec![0.0f32; n];
    let fill = |first_chunk: usize, part: &mut [f32]| {
        for (i, chunk) in part.chunks_mut(CHUNK).enumerate() {
            let c = first_chunk + i;
            let mut rng = Rng::new(seed.wrapping_add(c as u64));
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = rng.normal() + bias[(c * CHUNK + j) % bias.len()];
            }
        }
    };
    let chunks = n.div_ceil(CHUNK);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(chunks.max(1));
    if threads <= 1 {
        fill(0, &mut vals);
        return vals;
    }
    let per = chunks.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, part) in vals.chunks_mut(per * CHUNK).enumerate() {
            scope.spawn(move || fill(t * per, part));
        }
    });
    vals
}
