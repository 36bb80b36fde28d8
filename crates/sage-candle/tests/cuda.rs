//! The CUDA path of `sage_attention` (feature `cuda`; runs where a CUDA device is, skips elsewhere):
//! candle's CUDA tensors through sage-cuda on candle's own stream against the CPU path of the same
//! op, and all-MiniLM-L6-v2 on the GPU with int8-fp8 attention against exact attention.
//! Build: scripts/build-candle-cuda.sh.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use sage_candle::eval::{self, Agreement, TestSet};
use sage_candle::minilm::{self, ExactAttention, MiniLm, SageAttention};
use sage_candle::{SageParams, sage_attention};
use sage_core::{AttentionParams, Granularity, Layout, Mode};

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn host_f32(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn rel_l1(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).abs()).sum();
    num / den
}

#[test]
fn op_on_cuda_matches_the_cpu_path_and_exact() {
    let Some(gpu) = cuda() else { return };
    // (dtype, layout, causal, heads q, heads kv, seq q, seq k, head dim, kv_block)
    let cases = [
        (DType::F16, Layout::Nhd, false, 4, 4, 300, 300, 64, 64),
        (DType::BF16, Layout::Nhd, true, 4, 2, 200, 333, 128, 64),
        (DType::F16, Layout::Hnd, true, 8, 2, 257, 257, 128, 128),
        (DType::BF16, Layout::Hnd, false, 2, 1, 129, 77, 40, 128),
        (DType::F32, Layout::Nhd, false, 2, 2, 64, 190, 32, 64),
    ];
    let mut checked = 0;
    for (i, (dtype, layout, causal, hq, hkv, nq, nk, d, kv_block)) in cases.into_iter().enumerate()
    {
        let shape = |h: usize, n: usize| match layout {
            Layout::Nhd => (2, n, h, d),
            Layout::Hnd => (2, h, n, d),
        };
        let make = |h, n, mean: f32| {
            Tensor::randn(mean, 1.0f32, shape(h, n), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (q, k, v) = (make(hq, nq, 0.0), make(hkv, nk, 0.1), make(hkv, nk, -0.1));
        let params = SageParams {
            attention: AttentionParams {
                mode: Mode::Int8Fp8,
                granularity: Granularity::PerThread,
                causal,
                kv_block: Some(kv_block),
                ..Default::default()
            },
            layout,
            backend: None,
        };
        let cpu =
            sage_attention(&q, &k, &v, &params).unwrap_or_else(|e| panic!("case {i}: cpu: {e}"));
        let to_gpu = |t: &Tensor| t.to_device(&gpu).unwrap_or_else(|e| panic!("{e}"));
        let out = sage_attention(&to_gpu(&q), &to_gpu(&k), &to_gpu(&v), &params)
            .unwrap_or_else(|e| panic!("case {i}: cuda: {e}"));
        assert!(
            out.device().is_cuda(),
            "case {i}: the output stays on the GPU"
        );
        assert_eq!(out.dims(), q.dims(), "case {i}");
        assert_eq!(out.dtype(), dtype, "case {i}");
        let (got, want) = (host_f32(&out), host_f32(&cpu));
        assert!(
            got.iter().all(|x| x.is_finite()),
            "case {i}: non-finite output"
        );
        let r = rel_l1(&got, &want);
        println!(
            "case {i}: {dtype:?} {layout} causal={causal} GQA {hq}/{hkv} {nq}x{nk} D{d} kv{kv_block}: vs cpu rel_l1 {r:.2e}"
        );
        assert!(r <= 2e-3, "case {i}: cuda vs cpu rel_l1 {r}");
        if !causal && layout == Layout::Nhd && hq == hkv {
            let exact = minilm::exact_attention(&q, &k, &v).unwrap_or_else(|e| panic!("{e}"));
            let cos = eval::cosine(&got, &host_f32(&exact));
            println!("case {i}: vs exact cos {cos:.6}");
            assert!(cos >= 0.99, "case {i}: vs exact cos {cos}");
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}

#[test]
fn minilm_on_cuda_keeps_every_embedding() {
    let Some(gpu) = cuda() else { return };
    let dir = minilm::default_model_dir();
    let model = MiniLm::load_on(&dir, gpu).unwrap_or_else(|e| panic!("{e} (SAGE_MODEL_DIR)"));
    let set = TestSet::builtin();
    let (exact, exact_ms) = eval::embed_all(&model, &set.sentences, &mut ExactAttention)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("| attention | min cos | mean cos | Spearman | margin | ms |");
    println!("| exact (candle, f32, GPU) | 1 | 1 | 1 | - | {exact_ms:.1} |");
    for (name, params) in [
        (
            "int8-fp8 per-warp",
            AttentionParams::with_mode(Mode::Int8Fp8),
        ),
        (
            "int8-fp8 per-thread",
            AttentionParams {
                granularity: Granularity::PerThread,
                ..AttentionParams::with_mode(Mode::Int8Fp8)
            },
        ),
        ("int8-fp16", AttentionParams::with_mode(Mode::Int8Fp16)),
    ] {
        let mut attention = SageAttention::uniform(params, &model.config, None);
        let (run, ms) = eval::embed_all(&model, &set.sentences, &mut attention)
            .unwrap_or_else(|e| panic!("{e}"));
        let cos: Vec<f64> = exact
            .iter()
            .zip(&run)
            .map(|(a, b)| eval::cosine(a, b))
            .collect();
        let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let a = Agreement::compare(&set, &exact, &run);
        println!(
            "| {name} | {min:.6} | {mean:.6} | {:.5} | {:+.4} | {ms:.1} |",
            a.spearman, a.margin
        );
        // written so that a NaN fails too
        assert!(cos.iter().all(|c| *c >= 0.999), "{name}: min cos {min}");
    }
}
