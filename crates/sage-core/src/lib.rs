//! sage-core: the [`AttentionBackend`] trait, tensors, configuration, the numerics of ALGORITHM.md as
//! the CPU backend, the exact f64 reference and the accuracy metrics.

pub mod backend;
pub mod config;
pub mod cpu;
pub mod error;
pub mod io;
pub mod metrics;
pub mod numerics;
pub mod plan;
pub mod random;
pub mod reference;
pub mod tensor;

pub use backend::{
    AttentionBackend, AttentionOutput, Capabilities, DeviceOutput, DeviceTensor, Problem,
    QuantizedQkv, QuantizedV, TensorMeta, Timing, first_non_finite_slot, median,
    time_with_host_clock,
};
pub use config::{AttentionParams, BackendChoice, Config, ConfigLayer, Granularity, Mode};
pub use cpu::CpuBackend;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use plan::{Plan, Target};
pub use reference::{Reference, reference_attention};
pub use tensor::{DType, Layout, Shape, Storage, Tensor};
