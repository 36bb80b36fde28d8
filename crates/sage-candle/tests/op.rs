//! The candle custom op gives exactly what sage-core gives for the same inputs: every dtype, both
//! layouts, GQA, non-contiguous inputs; and bad inputs are errors that say what is wrong.

use candle_core::{DType as CandleDType, Device, Tensor};
use sage_candle::op::to_sage;
use sage_candle::{SageParams, sage_attention};
use sage_core::random::{Distribution, Rng, random_qkv};
use sage_core::{
    AttentionBackend, AttentionParams, CpuBackend, DType, Granularity, Layout, Mode, Shape,
    Storage, Tensor as SageTensor,
};

/// A sage tensor as a candle tensor of the same dtype, dims in memory order.
fn to_candle(t: &SageTensor) -> Tensor {
    let dims = t.shape().dims(t.layout()).to_vec();
    let made = match t.storage() {
        Storage::F16(v) => Tensor::from_vec(v.clone(), dims, &Device::Cpu),
        Storage::BF16(v) => Tensor::from_vec(v.clone(), dims, &Device::Cpu),
        Storage::F32(v) => Tensor::from_vec(v.clone(), dims, &Device::Cpu),
    };
    made.unwrap_or_else(|e| panic!("{e}"))
}

fn inputs(dtype: DType, layout: Layout, seed: u64) -> (SageTensor, SageTensor, SageTensor) {
    random_qkv(
        &mut Rng::new(seed),
        Shape::new(2, 4, 37, 32),
        Shape::new(2, 2, 70, 32),
        dtype,
        layout,
        Distribution::KOutliers,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_op_matches_sage_core_for_every_dtype_and_layout() {
    let cpu = CpuBackend::new();
    for dtype in DType::ALL {
        for layout in Layout::ALL {
            for mode in [Mode::Int8Fp8, Mode::Int4Fp8, Mode::Exact] {
                let (q, k, v) = inputs(dtype, layout, 11);
                let attention = AttentionParams {
                    granularity: Granularity::PerThread,
                    ..AttentionParams::with_mode(mode)
                };
                let direct = cpu
                    .attention(&q, &k, &v, &attention)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .out;
                let params = SageParams {
                    attention,
                    layout,
                    backend: None,
                };
                let out = sage_attention(&to_candle(&q), &to_candle(&k), &to_candle(&v), &params)
                    .unwrap_or_else(|e| panic!("{dtype} {layout} {mode}: {e}"));
                assert_eq!(out.dims(), q.shape().dims(layout));
                let out = to_sage(&out, layout).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(out, direct, "{dtype} {layout} {mode}: not bit-identical");
            }
        }
    }
}

#[test]
fn non_contiguous_inputs_are_made_contiguous() {
    let (q, k, v) = inputs(DType::F32, Layout::Hnd, 5);
    let params = SageParams::with_mode(Mode::Int8Fp8);
    // HND data seen through a transpose is an NHD view that is not contiguous
    let view = |t: &SageTensor| {
        to_candle(t)
            .transpose(1, 2)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (qv, kv, vv) = (view(&q), view(&k), view(&v));
    assert!(!qv.is_contiguous());
    let strided = sage_attention(&qv, &kv, &vv, &params).unwrap_or_else(|e| panic!("{e}"));
    let dense = |t: &Tensor| t.contiguous().unwrap_or_else(|e| panic!("{e}"));
    let packed = sage_attention(&dense(&qv), &dense(&kv), &dense(&vv), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    let diff = (strided - packed)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diff, 0.0);
}

#[test]
fn bad_inputs_say_what_is_wrong() {
    let (q, k, v) = inputs(DType::F16, Layout::Nhd, 3);
    let (q, k, v) = (to_candle(&q), to_candle(&k), to_candle(&v));
    let params = SageParams::default();
    let err = |r: candle_core::Result<Tensor>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let flat = q.flatten_to(1).unwrap_or_else(|e| panic!("{e}"));
    let e = err(sage_attention(&flat, &k, &v, &params));
    assert!(e.contains("q has shape") && e.contains("rank 4"), "{e}");
    let k32 = k
        .to_dtype(CandleDType::F32)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err(sage_attention(&q, &k32, &v, &params));
    assert!(e.contains("one dtype"), "{e}");
    let ints = q
        .to_dtype(CandleDType::U32)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err(sage_attention(&ints, &k, &v, &params));
    assert!(e.contains("f16, bf16 or f32"), "{e}");
    // head dim 160: beyond what any kernel supports
    let wide = Tensor::zeros((1, 4, 2, 160), CandleDType::F16, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err(sage_attention(&wide, &wide, &wide, &params));
    assert!(e.contains("head dim 160"), "{e}");
}
