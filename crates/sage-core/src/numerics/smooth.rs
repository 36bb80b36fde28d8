//! Smoothing (ALGORITHM.md Steps 1, 2 and 7): subtract channel means that softmax (K) or the
//! normalised rows of P (V) make irrelevant, or that a correction term adds back (Q).

/// Mean over `rows` rows of `x` (`[rows, d]`), per channel, summed in f32 in row order.
pub fn channel_mean(x: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; d];
    for r in 0..rows {
        for (s, &v) in sum.iter_mut().zip(&x[r * d..(r + 1) * d]) {
            *s += v;
        }
    }
    if rows > 0 {
        let n = rows as f32;
        for s in sum.iter_mut() {
            *s /= n;
        }
    }
    sum
}

/// Per-channel means over all `rows` rows, summed PAIRWISE in f32: sum(x[0..n]) = sum(x[0..h]) +
/// sum(x[h..n]) with h the largest power of two below n, then + 0.0 (a zero sum is +0), divided by
/// n. This is km (ALGORITHM.md Step 1) and vm (Step 7) in every backend: K' = K - km cancels, so a
/// mean off by its rounding error would move the K scales by several ulp on data with large channel
/// means, and the order has to be fixed. The pairwise one lets a GPU sum any power-of-two-aligned
/// blocks of tokens on their own (kernels/quant.cu) and is the more accurate.
pub fn token_mean(x: &[f32], rows: usize, d: usize) -> Vec<f32> {
    fn sum(x: &[f32], d: usize, c: usize, lo: usize, n: usize) -> f32 {
        if n == 1 {
            return x[lo * d + c];
        }
        // the largest power of two below n
        let h = if n.is_power_of_two() {
            n / 2
        } else {
            n.next_power_of_two() / 2
        };
        sum(x, d, c, lo, h) + sum(x, d, c, lo + h, n - h)
    }
    (0..d)
        .map(|c| {
            if rows == 0 {
                0.0
            } else {
                (sum(x, d, c, 0, rows) + 0.0) / rows as f32
            }
        })
        .collect()
}

/// Means of each group of `block` consecutive rows (the last may be short): `[ceil(rows/block), d]`.
pub fn block_means(x: &[f32], rows: usize, d: usize, block: usize) -> Vec<f32> {
    let groups = rows.div_ceil(block);
    let mut out = Vec::with_capacity(groups * d);
    for g in 0..groups {
        let start = g * block;
        let end = (start + block).min(rows);
        out.extend(channel_mean(&x[start * d..end * d], end - start, d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_of_blocks_include_the_short_last_block() {
        // 5 rows of 2 channels, blocks of 2: means of rows {0,1}, {2,3}, {4}
        let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(block_means(&x, 5, 2, 2), vec![1.0, 2.0, 5.0, 6.0, 8.0, 9.0]);
        assert_eq!(channel_mean(&x, 5, 2), vec![4.0, 5.0]);
        assert_eq!(channel_mean(&[], 0, 3), vec![0.0; 3]);
        assert_eq!(token_mean(&x, 5, 2), vec![4.0, 5.0]);
        assert_eq!(token_mean(&[], 0, 3), vec![0.0; 3]);
    }

    /// The same sums as a binary counter over the tokens (the form the CUDA kernels use on blocks).
    fn counter_sum(x: &[f32]) -> f32 {
        let mut lv = [0.0f32; 32];
        for (i, &v) in x.iter().enumerate() {
            let mut carry = v;
            let mut k = 0;
            while (i >> k) & 1 == 1 {
                carry += lv[k];
                k += 1;
            }
            lv[k] = carry;
        }
        let mut acc: Option<f32> = None;
        for (k, &l) in lv.iter().enumerate() {
            if (x.len() >> k) & 1 == 1 {
                acc = Some(acc.map_or(l, |a| l + a));
            }
        }
        acc.unwrap_or(0.0) + 0.0
    }

    #[test]
    fn token_mean_is_the_pairwise_sum_in_any_aligned_split() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // a large common mean: the order of the sum shows in the low bits
            10.0 + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        };
        let mut sequential_differs = false;
        for n in (1..1100).chain([2047, 2048, 2049, 2200, 4095, 4096, 4097]) {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let mean = token_mean(&x, n, 1)[0];
            assert_eq!(
                mean.to_bits(),
                (counter_sum(&x) / n as f32).to_bits(),
                "n = {n}"
            );
            // blocks of 128 tokens summed on their own, then their sums pairwise: the same value
            let blocks: Vec<f32> = x.chunks(128).map(counter_sum).collect();
            assert_eq!(
                (counter_sum(&blocks) / n as f32).to_bits(),
                mean.to_bits(),
                "n = {n}"
            );
            sequential_differs |= channel_mean(&x, n, 1)[0] != mean;
        }
        assert!(
            sequential_differs,
            "the test data cannot tell the orders apart"
        );
        // an all -0.0 channel has the mean +0.0
        assert_eq!(token_mean(&[-0.0; 5], 5, 1)[0].to_bits(), 0);
    }
}
