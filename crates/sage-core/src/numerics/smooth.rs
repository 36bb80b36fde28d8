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
    }
}
