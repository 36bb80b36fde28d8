//! Criterion benches: every available backend and mode, D in {64, 128}, N in {1024, 4096, 16384}
//! (1024 only on the CPU unless `SAGE_BENCH_N` says otherwise), causal and not. Throughput is in
//! operations (4·B·H·N²·D, halved for causal), so criterion's "elem/s" reads as operations per second.
//! Time comes from the device's own clock (`AttentionBackend::time_attention`: CUDA events, wgpu
//! timestamp queries) through `iter_custom`; `end_to_end` includes quantization, `kernel` does not.
//!
//! `cargo bench --bench attention -- 'cpu/int8-fp8'` narrows the set; `SAGE_BENCH_N=4096` and
//! `SAGE_BENCH_BACKENDS=wgpu` choose sizes and backends.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sage::random::{Distribution, Rng, random_qkv};
use sage::{AttentionParams, BackendChoice, DType, Granularity, Layout, Shape};

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn attention(c: &mut Criterion) {
    let wanted = env_list("SAGE_BENCH_BACKENDS")
        .unwrap_or_else(|| vec!["cpu".into(), "wgpu".into(), "cuda".into()]);
    for name in wanted {
        let Ok(choice) = name.parse::<BackendChoice>() else {
            continue;
        };
        let backend = match sage::open(choice) {
            Ok((b, _)) => b,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        let caps = backend.capabilities();
        let ns: Vec<usize> = env_list("SAGE_BENCH_N")
            .map(|v| v.iter().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| {
                if name == "cpu" {
                    vec![1024]
                } else {
                    vec![1024, 4096, 16384]
                }
            });
        for d in [64usize, 128] {
            for &n in &ns {
                // B·N = 32k tokens on GPUs, as torch_sdpa.py measures; one small head group on the CPU
                let (b, h) = if name == "cpu" {
                    (1, 4)
                } else {
                    ((32768 / n).max(1), 32)
                };
                let shape = Shape::new(b, h, n, d);
                let Ok((q, k, v)) = random_qkv(
                    &mut Rng::new(7),
                    shape,
                    shape,
                    DType::F16,
                    Layout::Hnd,
                    Distribution::KOutliers,
                ) else {
                    continue;
                };
                let (Ok(dq), Ok(dk), Ok(dv)) =
                    (backend.upload(&q), backend.upload(&k), backend.upload(&v))
                else {
                    eprintln!("skipping {name} {b}x{h}x{n}x{d}: upload failed");
                    continue;
                };
                for causal in [false, true] {
                    let ops = 4.0 * (b * h * n * n * d) as f64 / if causal { 2.0 } else { 1.0 };
                    // the CPU has no separate kernel timing: its "kernel" would repeat end_to_end
                    let stages: &[&str] = if name == "cpu" {
                        &["end_to_end"]
                    } else {
                        &["end_to_end", "kernel"]
                    };
                    for &stage in stages {
                        let mut group = c.benchmark_group(format!("{name}/{stage}"));
                        group.throughput(Throughput::Elements(ops as u64));
                        group.sample_size(10);
                        for &mode in &caps.modes {
                            let params = AttentionParams {
                                mode,
                                granularity: Granularity::PerThread,
                                causal,
                                ..Default::default()
                            };
                            let id = format!(
                                "{mode}/D{d}/N{n}/{}",
                                if causal { "causal" } else { "full" }
                            );
                            group.bench_function(id, |bench| {
                                bench.iter_custom(|iters| {
                                    let t = backend.time_attention(
                                        &dq,
                                        &dk,
                                        &dv,
                                        &params,
                                        1,
                                        iters as usize,
                                    );
                                    let ms = match t {
                                        Ok(t) if stage == "kernel" => {
                                            t.kernel_ms.unwrap_or(t.end_to_end_ms)
                                        }
                                        Ok(t) => t.end_to_end_ms,
                                        Err(e) => panic!("{name} {mode}: {e}"),
                                    };
                                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                                })
                            });
                        }
                        group.finish();
                    }
                }
            }
        }
    }
}

criterion_group!(benches, attention);
criterion_main!(benches);
