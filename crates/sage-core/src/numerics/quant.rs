//! Symmetric per-group quantization of Q' and K' (ALGORITHM.md Step 3) and the scale groups of
//! each granularity.

use crate::config::Granularity;

/// Which operand a scale group belongs to: Q and K group their tokens differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Q,
    K,
}

/// Tokens per outer group, and sub-scales inside it: the fixed group sizes of Step 3.
/// Per-thread subgroups are the rows (Q) and columns (K) that one thread of an m16n8 mma fragment owns.
pub fn group_shape(granularity: Granularity, operand: Operand) -> (usize, usize) {
    match (granularity, operand) {
        (Granularity::PerBlock, Operand::Q) => (128, 1),
        (Granularity::PerWarp, Operand::Q) => (32, 1),
        (Granularity::PerThread, Operand::Q) => (32, 8),
        (Granularity::PerThread, Operand::K) => (64, 4),
        (_, Operand::K) => (64, 1),
    }
}

/// The scale group of token `t` within its head.
#[inline]
pub fn scale_group(granularity: Granularity, operand: Operand, t: usize) -> usize {
    let (block, subs) = group_shape(granularity, operand);
    let sub = match (granularity, operand) {
        (Granularity::PerThread, Operand::Q) => t % 8,
        (Granularity::PerThread, Operand::K) => (t % 8) / 2,
        _ => 0,
    };
    (t / block) * subs + sub
}

/// Scale groups per head for `n` tokens. A short last block still has all its sub-groups; one with
/// no tokens has scale 1.
pub fn scale_groups(granularity: Granularity, operand: Operand, n: usize) -> usize {
    let (block, subs) = group_shape(granularity, operand);
    n.div_ceil(block) * subs
}

/// Quantizes one head's rows `x` (`[rows, d]`, finite) into `codes` (`[rows, d]`) and `scales`
/// (`[scale_groups]`): scale = amax/qmax, code = clamp(round_half_even(x * (qmax/amax)), ±qmax).
#[allow(clippy::too_many_arguments)] // the parameters are the step's inputs, named as in ALGORITHM.md
pub fn quantize_rows(
    x: &[f32],
    rows: usize,
    d: usize,
    granularity: Granularity,
    operand: Operand,
    qmax: i32,
    codes: &mut [i8],
    scales: &mut [f32],
) {
    let groups = scale_groups(granularity, operand, rows);
    debug_assert_eq!(scales.len(), groups);
    let mut amax = vec![0.0f32; groups];
    for r in 0..rows {
        let g = scale_group(granularity, operand, r);
        let row_max = x[r * d..(r + 1) * d]
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        amax[g] = amax[g].max(row_max);
    }
    let qmax_f = qmax as f32;
    let inv: Vec<f32> = amax
        .iter()
        .map(|&a| if a == 0.0 { 0.0 } else { qmax_f / a })
        .collect();
    for (s, &a) in scales.iter_mut().zip(&amax) {
        *s = if a == 0.0 { 1.0 } else { a / qmax_f };
    }
    for r in 0..rows {
        let k = inv[scale_group(granularity, operand, r)];
        for (c, &v) in codes[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&x[r * d..(r + 1) * d])
        {
            *c = (v * k).round_ties_even().clamp(-qmax_f, qmax_f) as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thread_groups_follow_the_fragment_layout() {
        let g = Granularity::PerThread;
        // Q: rows 0, 8, 16, 24 share a scale; the next 32-row block starts at group 8.
        assert_eq!(
            scale_group(g, Operand::Q, 0),
            scale_group(g, Operand::Q, 24)
        );
        assert_eq!(scale_group(g, Operand::Q, 7), 7);
        assert_eq!(scale_group(g, Operand::Q, 33), 9);
        // K: tokens 0,1 and 8,9 share a scale; 2,3 the next.
        assert_eq!(scale_group(g, Operand::K, 9), 0);
        assert_eq!(scale_group(g, Operand::K, 3), 1);
        assert_eq!(scale_group(g, Operand::K, 64 + 7), 7);
        assert_eq!(scale_groups(g, Operand::K, 65), 8);
        assert_eq!(scale_groups(Granularity::PerBlock, Operand::Q, 129), 2);
        assert_eq!(scale_groups(Granularity::PerWarp, Operand::Q, 0), 0);
    }

    #[test]
    fn codes_round_half_to_even_and_stay_in_range() {
        // amax 127 makes the quantization step exactly 1.
        let x = [127.0, 0.5, 1.5, -2.5, -127.0, 3.49];
        let mut codes = [0i8; 6];
        let mut scales = [0.0f32; 1];
        quantize_rows(
            &x,
            1,
            6,
            Granularity::PerBlock,
            Operand::Q,
            127,
            &mut codes,
            &mut scales,
        );
        assert_eq!(codes, [127, 0, 2, -2, -127, 3]);
        assert_eq!(scales, [1.0]);
        let x = [0.0f32; 4];
        let mut codes = [5i8; 4];
        let mut scales = [0.0f32; 1];
        quantize_rows(
            &x,
            1,
            4,
            Granularity::PerBlock,
            Operand::K,
            7,
            &mut codes,
            &mut scales,
        );
        assert_eq!((codes, scales), ([0; 4], [1.0]));
    }
}
