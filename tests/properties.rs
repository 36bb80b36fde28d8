//! Property tests over random shapes: N from 1 to a few hundred (never a multiple of any block by
//! design), D from 1 to 128, GQA ratios, causal with Nq != Nk, both layouts, every dtype, mode and
//! granularity. The CPU backend against the exact f64 reference, and every other available backend
//! against the CPU (ALGORITHM.md: rel_l1 <= 2e-3). Bugs in indexing or masking show up as garbage,
//! far outside these bounds; proptest shrinks a failure to its smallest shape.

use proptest::prelude::*;
use sage::random::{Distribution, Rng, random_qkv};
use sage::{
    AttentionBackend, AttentionParams, CpuBackend, DType, Granularity, Layout, Metrics, Mode,
    Shape, reference_attention,
};

#[derive(Clone, Debug)]
struct Problem {
    batch: usize,
    heads_kv: usize,
    group: usize,
    seq_q: usize,
    seq_k: usize,
    head_dim: usize,
    dtype: DType,
    layout: Layout,
    mode: Mode,
    granularity: Granularity,
    causal: bool,
    seed: u64,
}

fn problems(max_seq: usize) -> impl Strategy<Value = Problem> {
    (
        (
            1usize..=2,
            1usize..=3,
            prop::sample::select(vec![1usize, 2, 4]),
        ),
        (1..=max_seq, 1..=max_seq, 1usize..=128),
        (
            prop::sample::select(DType::ALL.to_vec()),
            prop::sample::select(Layout::ALL.to_vec()),
        ),
        (
            prop::sample::select(Mode::CONCRETE.to_vec()),
            prop::sample::select(Granularity::ALL.to_vec()),
        ),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (batch, heads_kv, group),
                (seq_q, seq_k, head_dim),
                (dtype, layout),
                (mode, granularity),
                causal,
                seed,
            )| Problem {
                batch,
                heads_kv,
                group,
                seq_q,
                seq_k,
                head_dim,
                dtype,
                layout,
                mode,
                granularity,
                causal,
                seed,
            },
        )
}

impl Problem {
    fn run(&self, backend: &dyn AttentionBackend) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let q = Shape::new(
            self.batch,
            self.heads_kv * self.group,
            self.seq_q,
            self.head_dim,
        );
        let kv = Shape::new(self.batch, self.heads_kv, self.seq_k, self.head_dim);
        let (q, k, v) = random_qkv(
            &mut Rng::new(self.seed),
            q,
            kv,
            self.dtype,
            self.layout,
            Distribution::KOutliers,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = AttentionParams {
            mode: self.mode,
            granularity: self.granularity,
            causal: self.causal,
            ..Default::default()
        };
        let got = backend
            .attention(&q, &k, &v, &p)
            .unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
        let cpu = CpuBackend::new()
            .attention(&q, &k, &v, &backend.capabilities().pin_kv_block(&p))
            .unwrap_or_else(|e| panic!("cpu: {e}"));
        let exact = reference_attention(&q, &k, &v, &p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.out.shape(), q.shape());
        (got.out.to_f32_hnd(), cpu.out.to_f32_hnd(), exact.out)
    }
}

/// Loose bounds against exact: they hold for every shape, tiny ones included, and catch any
/// indexing or masking bug (whose outputs are unrelated to the right ones).
fn bound(mode: Mode) -> (f64, f64) {
    match mode {
        Mode::Exact => (0.9999, 6e-3),
        Mode::Int8Fp16 => (0.999, 0.05),
        Mode::Int8Fp8 => (0.995, 0.12),
        Mode::Int4Fp8 | Mode::Auto => (0.9, 0.5),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn cpu_tracks_exact_on_any_shape(p in problems(300)) {
        let (out, _, exact) = p.run(&CpuBackend::new());
        let m = Metrics::compare(&out, &exact);
        let (min_cos, max_l1) = bound(p.mode);
        prop_assert!(m.cos >= min_cos && m.rel_l1 <= max_l1, "{p:?}: cos {} rel_l1 {}", m.cos, m.rel_l1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn wgpu_matches_cpu_on_any_shape(p in problems(200)) {
        // the backend is opened once per case: cheap next to the case itself on a software device
        let Ok(backend) = sage_wgpu::WgpuBackend::new() else {
            let required = std::env::var("SAGE_REQUIRE").unwrap_or_default();
            prop_assert!(!required.split(',').any(|r| r == "wgpu"), "wgpu required but unavailable");
            return Ok(());
        };
        let (out, cpu, _) = p.run(&backend);
        let m = Metrics::compare(&out, &cpu);
        prop_assert!(m.rel_l1 <= 2e-3 || m.max_abs < 1e-3, "{p:?}: vs cpu rel_l1 {} max_abs {}", m.rel_l1, m.max_abs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn cuda_matches_cpu_on_any_shape(p in problems(300)) {
        let Ok(backend) = sage_cuda::CudaBackend::new() else {
            let required = std::env::var("SAGE_REQUIRE").unwrap_or_default();
            prop_assert!(!required.split(',').any(|r| r == "cuda"), "cuda required but unavailable");
            return Ok(());
        };
        if !backend.capabilities().modes.contains(&p.mode) {
            return Ok(());
        }
        let (out, cpu, _) = p.run(&backend);
        let m = Metrics::compare(&out, &cpu);
        prop_assert!(m.rel_l1 <= 2e-3 || m.max_abs < 1e-3, "{p:?}: vs cpu rel_l1 {} max_abs {}", m.rel_l1, m.max_abs);
    }
}
