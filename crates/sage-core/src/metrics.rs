//! Accuracy metrics of the SageAttention2 paper (App. A.7) over a flattened output.

use serde::Serialize;

/// How far an output is from a reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// cosine similarity <o, r> / (|o| |r|)
    pub cos: f64,
    /// Σ|o - r| / Σ|r|
    pub rel_l1: f64,
    /// sqrt(mean (o - r)²)
    pub rmse: f64,
    /// max |o - r|
    pub max_abs: f64,
    /// mean |o - r|
    pub mean_abs: f64,
}

impl Metrics {
    /// Compares `out` with `reference`, element by element. Empty inputs give perfect scores;
    /// a NaN anywhere makes every metric NaN, so that it cannot pass a threshold.
    pub fn compare<A, B>(out: &[A], reference: &[B]) -> Metrics
    where
        A: Copy + Into<f64>,
        B: Copy + Into<f64>,
    {
        assert_eq!(out.len(), reference.len(), "metrics need equal lengths");
        if out.is_empty() {
            return Metrics {
                cos: 1.0,
                ..Default::default()
            };
        }
        let (mut dot, mut no, mut nr, mut l1, mut l1r, mut sq, mut max) =
            (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mut nan = false;
        for (&o, &r) in out.iter().zip(reference) {
            let (o, r): (f64, f64) = (o.into(), r.into());
            nan |= o.is_nan() || r.is_nan();
            let diff = o - r;
            dot += o * r;
            no += o * o;
            nr += r * r;
            l1 += diff.abs();
            l1r += r.abs();
            sq += diff * diff;
            max = max.max(diff.abs());
        }
        if nan {
            return Metrics {
                cos: f64::NAN,
                rel_l1: f64::NAN,
                rmse: f64::NAN,
                max_abs: f64::NAN,
                mean_abs: f64::NAN,
            };
        }
        let n = out.len() as f64;
        let cos = if no == 0.0 && nr == 0.0 {
            1.0
        } else {
            dot / (no.sqrt() * nr.sqrt())
        };
        let rel_l1 = if l1r == 0.0 {
            if l1 == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            l1 / l1r
        };
        Metrics {
            cos,
            rel_l1,
            rmse: (sq / n).sqrt(),
            max_abs: max,
            mean_abs: l1 / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_known_vectors() {
        let r = [1.0f64, 2.0, 3.0, -4.0];
        let same = Metrics::compare(&r, &r);
        assert_eq!(
            (same.cos, same.rel_l1, same.rmse, same.max_abs),
            (1.0, 0.0, 0.0, 0.0)
        );
        let o = [1.0f32, 2.0, 3.0, -3.0];
        let m = Metrics::compare(&o, &r);
        assert!((m.rel_l1 - 0.1).abs() < 1e-12);
        assert!((m.rmse - 0.5).abs() < 1e-12);
        assert_eq!(m.max_abs, 1.0);
        let neg: Vec<f64> = r.iter().map(|x| -x).collect();
        assert!((Metrics::compare(&neg, &r).cos + 1.0).abs() < 1e-12);
        assert!(
            Metrics::compare(&[f32::NAN, 0.0, 0.0, 0.0], &r)
                .cos
                .is_nan()
        );
    }
}
