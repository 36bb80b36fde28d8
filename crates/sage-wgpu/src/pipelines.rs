//! Shader modules and compute pipelines, built once per device. The WGSL sources live in the
//! top-level `shaders/` folder and are embedded at build time, so the binary stands alone.

use std::borrow::Cow;

use sage_core::{Error, Result};

/// Prepended to every stage: the parameter block, number formats and helpers.
pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// (file name, source, entry points) of every stage.
pub const STAGES: [(&str, &str, &[&str]); 9] = [
    (
        "convert.wgsl",
        include_str!("../../../shaders/convert.wgsl"),
        &["to_f32_padded"],
    ),
    (
        "smooth.wgsl",
        include_str!("../../../shaders/smooth.wgsl"),
        &["block_mean"],
    ),
    (
        "quantize.wgsl",
        include_str!("../../../shaders/quantize.wgsl"),
        &["quantize_qk"],
    ),
    (
        "rotate.wgsl",
        include_str!("../../../shaders/rotate.wgsl"),
        &["rotate_rows"],
    ),
    (
        "quantize_v.wgsl",
        include_str!("../../../shaders/quantize_v.wgsl"),
        &["quantize_v"],
    ),
    (
        "attn.wgsl",
        include_str!("../../../shaders/attn.wgsl"),
        &["attn_quantized"],
    ),
    (
        "attn_exact.wgsl",
        include_str!("../../../shaders/attn_exact.wgsl"),
        &["attn_exact"],
    ),
    (
        "store.wgsl",
        include_str!("../../../shaders/store.wgsl"),
        &["store_output"],
    ),
    (
        "probe.wgsl",
        include_str!("../../../shaders/probe.wgsl"),
        &["loop_probe"],
    ),
];

/// The full source of one stage, as the device compiles it.
pub fn full_source(stage_source: &str) -> String {
    format!("{COMMON}\n{stage_source}")
}

/// One pipeline per entry point.
pub struct Pipelines {
    pub to_f32_padded: wgpu::ComputePipeline,
    pub block_mean: wgpu::ComputePipeline,
    pub quantize_qk: wgpu::ComputePipeline,
    pub rotate_rows: wgpu::ComputePipeline,
    pub quantize_v: wgpu::ComputePipeline,
    pub attn_quantized: wgpu::ComputePipeline,
    pub attn_exact: wgpu::ComputePipeline,
    pub store_output: wgpu::ComputePipeline,
    pub loop_probe: wgpu::ComputePipeline,
}

impl Pipelines {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let mut built = Vec::new();
        for (file, source, entries) in STAGES {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(full_source(source))),
            });
            for entry in entries {
                built.push(
                    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    }),
                );
            }
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(Error::Compile {
                    kernel: file.to_string(),
                    log: e.to_string(),
                });
            }
        }
        let mut it = built.into_iter();
        let mut next = || {
            it.next().ok_or_else(|| Error::Compile {
                kernel: "pipelines".into(),
                log: "fewer pipelines than entry points".into(),
            })
        };
        Ok(Pipelines {
            to_f32_padded: next()?,
            block_mean: next()?,
            quantize_qk: next()?,
            rotate_rows: next()?,
            quantize_v: next()?,
            attn_quantized: next()?,
            attn_exact: next()?,
            store_output: next()?,
            loop_probe: next()?,
        })
    }
}
