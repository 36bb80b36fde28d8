//! The `rotate` option (ALGORITHM.md Step 2b): multiply a row by the normalized Sylvester Hadamard
//! matrix, as a fast Walsh-Hadamard transform (D log D additions, then one scale).

/// In place: `row <- row · H / sqrt(len)`, `len` a power of two. Sylvester order: H_2n = [[H, H], [H, -H]].
pub fn fwht_normalized(row: &mut [f32]) {
    let n = row.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (row[i], row[i + h]);
                row[i] = a + b;
                row[i + h] = a - b;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f32).sqrt();
    for x in row.iter_mut() {
        *x *= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry (i, j) of the Sylvester Hadamard matrix: (-1)^popcount(i & j).
    fn h(i: usize, j: usize) -> f32 {
        if (i & j).count_ones().is_multiple_of(2) {
            1.0
        } else {
            -1.0
        }
    }

    #[test]
    fn matches_the_matrix_and_preserves_dot_products() {
        let n = 64;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let y: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.7).collect();
        let mut xr = x.clone();
        fwht_normalized(&mut xr);
        for (j, &got) in xr.iter().enumerate() {
            let want: f32 = (0..n).map(|i| x[i] * h(i, j)).sum::<f32>() / (n as f32).sqrt();
            assert!((got - want).abs() < 1e-4, "column {j}");
        }
        let mut yr = y.clone();
        fwht_normalized(&mut yr);
        let dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let dot_r: f32 = xr.iter().zip(&yr).map(|(a, b)| a * b).sum();
        assert!((dot - dot_r).abs() < 1e-3, "{dot} vs {dot_r}");
    }
}
