//! The end-to-end comparison of a model run with sage attention against the same model with exact
//! attention: per-sentence embedding cosine, and how well the similarities of sentence pairs keep
//! their order (Spearman rank correlation, nearest neighbours, paraphrases above unrelated pairs).

use std::time::Instant;

use sage_core::{AttentionParams, Error, Granularity, Mode, Result};

use crate::minilm::{Attention, MiniLm};

/// The test pairs shipped with the crate (`data/pairs.txt`).
pub const PAIRS: &str = include_str!("../data/pairs.txt");
/// The calibration inputs shipped with the crate (`data/calibration.txt`).
pub const CALIBRATION: &str = include_str!("../data/calibration.txt");

/// How two sentences of a pair relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    Paraphrase,
    /// Same topic, another meaning.
    Related,
    Unrelated,
}

/// A pair of sentences, by index into [`TestSet::sentences`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub kind: PairKind,
}

/// Sentences and the pairs made of them.
#[derive(Clone, Debug, PartialEq)]
pub struct TestSet {
    pub sentences: Vec<String>,
    pub pairs: Vec<Pair>,
}

/// The lines of a text file that are not empty or `#` comments.
pub fn text_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

impl TestSet {
    /// Parses `kind<TAB>sentence<TAB>sentence` lines (`#` comments); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<TestSet> {
        let mut set = TestSet {
            sentences: Vec::new(),
            pairs: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| Error::Format {
                path: format!("{origin} line {}", i + 1),
                reason,
            };
            let fields: Vec<&str> = line.split('\t').collect();
            let [kind, a, b] = fields[..] else {
                return Err(bad(format!(
                    "{} tab-separated fields; expected kind, sentence, sentence",
                    fields.len()
                )));
            };
            let kind = match kind {
                "paraphrase" => PairKind::Paraphrase,
                "related" => PairKind::Related,
                "unrelated" => PairKind::Unrelated,
                other => {
                    return Err(bad(format!(
                        "`{other}` is not a pair kind (paraphrase, related, unrelated)"
                    )));
                }
            };
            let (a, b) = (set.index_of(a.trim()), set.index_of(b.trim()));
            set.pairs.push(Pair { a, b, kind });
        }
        Ok(set)
    }

    /// The shipped test pairs.
    pub fn builtin() -> TestSet {
        match TestSet::parse(PAIRS, "data/pairs.txt") {
            Ok(set) => set,
            Err(e) => unreachable!("the shipped pairs parse (checked by a test): {e}"),
        }
    }

    fn index_of(&mut self, sentence: &str) -> usize {
        match self.sentences.iter().position(|s| s == sentence) {
            Some(i) => i,
            None => {
                self.sentences.push(sentence.to_string());
                self.sentences.len() - 1
            }
        }
    }
}

/// The embeddings of every sentence, and the milliseconds it took.
pub fn embed_all(
    model: &MiniLm,
    sentences: &[String],
    attention: &mut dyn Attention,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let start = Instant::now();
    let embeddings = sentences
        .iter()
        .map(|s| model.embed(s, attention))
        .collect::<Result<Vec<_>>>()?;
    Ok((embeddings, start.elapsed().as_secs_f64() * 1e3))
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Ranks (1-based, ties get their mean rank).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&i, &j| xs[i].total_cmp(&xs[j]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            r[o] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation: Pearson's correlation of the ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    if n < 2.0 {
        return 1.0;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va == 0.0 || vb == 0.0 {
        return if va == vb { 1.0 } else { 0.0 };
    }
    cov / (va.sqrt() * vb.sqrt())
}

/// The similarity of each pair under one set of embeddings.
pub fn pair_similarities(set: &TestSet, embeddings: &[Vec<f32>]) -> Vec<f64> {
    set.pairs
        .iter()
        .map(|p| cosine(&embeddings[p.a], &embeddings[p.b]))
        .collect()
}

/// For each sentence, the index of its most similar other sentence.
fn nearest_neighbours(embeddings: &[Vec<f32>]) -> Vec<Option<usize>> {
    (0..embeddings.len())
        .map(|i| {
            (0..embeddings.len()).filter(|&j| j != i).max_by(|&a, &b| {
                cosine(&embeddings[i], &embeddings[a])
                    .total_cmp(&cosine(&embeddings[i], &embeddings[b]))
            })
        })
        .collect()
}

/// How a run's embeddings agree with the exact run's.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Embedding cosine with the exact run: the worst sentence, and the mean.
    pub min_cos: f64,
    pub mean_cos: f64,
    /// Spearman correlation of the pair similarities with the exact run's.
    pub spearman: f64,
    /// Largest change of a pair similarity.
    pub max_sim_diff: f64,
    /// Share of sentences whose nearest neighbour is the exact run's.
    pub top1: f64,
    /// Smallest paraphrase similarity minus largest unrelated similarity (> 0: every paraphrase
    /// pair scores above every unrelated pair).
    pub margin: f64,
}

impl Agreement {
    /// Compares `run` with `exact`, both embeddings of `set.sentences`.
    pub fn compare(set: &TestSet, exact: &[Vec<f32>], run: &[Vec<f32>]) -> Agreement {
        let cos: Vec<f64> = exact.iter().zip(run).map(|(e, r)| cosine(e, r)).collect();
        let (se, sr) = (pair_similarities(set, exact), pair_similarities(set, run));
        let (ne, nr) = (nearest_neighbours(exact), nearest_neighbours(run));
        let sims_of = |kind| {
            set.pairs
                .iter()
                .zip(&sr)
                .filter(move |(p, _)| p.kind == kind)
                .map(|(_, &s)| s)
        };
        let min_para = sims_of(PairKind::Paraphrase).fold(f64::INFINITY, f64::min);
        let max_unrel = sims_of(PairKind::Unrelated).fold(f64::NEG_INFINITY, f64::max);
        Agreement {
            min_cos: cos.iter().copied().fold(f64::INFINITY, f64::min),
            mean_cos: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
            spearman: spearman(&se, &sr),
            max_sim_diff: se
                .iter()
                .zip(&sr)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max),
            top1: ne.iter().zip(&nr).filter(|(a, b)| a == b).count() as f64
                / ne.len().max(1) as f64,
            margin: min_para - max_unrel,
        }
    }
}

/// One row of the end-to-end table: a label and the attention parameters of every layer.
#[derive(Clone, Debug)]
pub struct Variant {
    pub label: String,
    pub params: AttentionParams,
}

/// The settings `sage model minilm` compares with exact attention: every mode, the three
/// granularities of `int8-fp8`, `int4-fp8` with and without `smooth_q`, and `rotate` where it
/// could matter. `base` gives the options not varied here (kv_block, smooth_v, ...).
pub fn variants(base: &AttentionParams) -> Vec<Variant> {
    let with = |mode: Mode, granularity: Granularity, smooth_q: Option<bool>, rotate: bool| {
        let params = AttentionParams {
            mode,
            granularity,
            smooth_q,
            rotate,
            ..*base
        };
        let mut label = mode.to_string();
        if mode.is_quantized() {
            label.push_str(&format!(" {granularity}"));
        }
        if mode == Mode::Int4Fp8 && smooth_q == Some(false) {
            label.push_str(" no-smooth-q");
        }
        if rotate {
            label.push_str(" +rotate");
        }
        Variant { label, params }
    };
    use Granularity::{PerBlock, PerThread, PerWarp};
    vec![
        with(Mode::Exact, PerWarp, None, false),
        with(Mode::Int8Fp16, PerWarp, None, false),
        with(Mode::Int8Fp8, PerBlock, None, false),
        with(Mode::Int8Fp8, PerWarp, None, false),
        with(Mode::Int8Fp8, PerThread, None, false),
        with(Mode::Int8Fp8, PerWarp, None, true),
        with(Mode::Int4Fp8, PerWarp, None, false),
        with(Mode::Int4Fp8, PerThread, None, false),
        with(Mode::Int4Fp8, PerWarp, Some(false), false),
        with(Mode::Int4Fp8, PerWarp, None, true),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_pairs_parse() {
        let set = TestSet::parse(PAIRS, "pairs.txt").unwrap();
        assert!(
            (24..=40).contains(&set.sentences.len()),
            "{}",
            set.sentences.len()
        );
        for kind in [PairKind::Paraphrase, PairKind::Related, PairKind::Unrelated] {
            assert!(set.pairs.iter().any(|p| p.kind == kind));
        }
        assert!(text_lines(CALIBRATION).len() >= 6);
        let e = TestSet::parse("same\ta\tb\n", "x.txt").unwrap_err();
        assert!(e.to_string().contains("x.txt line 1"), "{e}");
    }

    #[test]
    fn rank_statistics() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
    }
}
