//! The one error type of sage. Backend crates convert their own failures into it, so a caller
//! handles every backend the same way.

use std::fmt;

/// Everything that can go wrong in sage, in groups: the caller's input, configuration, backends, files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- the caller's tensors and parameters ----
    /// A tensor has the wrong rank, size or a shape that does not match its partner.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        expected: String,
        got: String,
    },
    /// The head dimension is larger than any kernel supports (smaller ones are padded).
    #[error("head dim {got} is not supported: the largest supported head dim is {max}")]
    HeadDim { got: usize, max: usize },
    /// A NaN or infinity in Q, K or V in a quantized mode, found while computing the group absmax.
    #[error(
        "non-finite value {value} in {tensor} at batch {batch}, head {head}, token {token} (quantized modes need finite inputs; the exact mode lets them propagate)"
    )]
    NonFinite {
        tensor: &'static str,
        batch: usize,
        head: usize,
        token: usize,
        value: f32,
    },
    /// A parameter value that no backend accepts (a kv_block of 100, a negative sm_scale, ...).
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam { name: String, reason: String },

    // ---- configuration ----
    /// A key that no config layer knows, named with where it came from.
    #[error("unknown config key `{key}` in {origin}")]
    UnknownKey { key: String, origin: String },
    /// A known key with a value that does not parse.
    #[error("bad value for config key `{key}` in {origin}: {reason}")]
    BadValue {
        key: String,
        origin: String,
        reason: String,
    },

    // ---- backends and devices ----
    /// The backend cannot run here at all (no driver, no adapter, not compiled in).
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// The backend runs, but not this feature (a mode, a dtype, a head dim, ...).
    #[error("backend `{backend}` does not support {feature}")]
    Unsupported {
        backend: &'static str,
        feature: String,
    },
    /// A kernel or shader failed to compile; the log is the compiler's.
    #[error("kernel `{kernel}` failed to compile:\n{log}")]
    Compile { kernel: String, log: String },
    /// A kernel launch or a device call failed.
    #[error("{backend}: launch of `{kernel}` failed: {reason}")]
    Launch {
        backend: &'static str,
        kernel: String,
        reason: String,
    },
    /// The device has not got the memory a call needs.
    #[error("{backend}: out of device memory ({requested} bytes requested)")]
    OutOfMemory {
        backend: &'static str,
        requested: u64,
    },
    /// The device went away (driver reset, device lost).
    #[error("{backend}: device lost: {reason}")]
    DeviceLost {
        backend: &'static str,
        reason: String,
    },
    /// A device tensor was handed to a backend that did not make it.
    #[error("device tensor belongs to backend `{owner}`, not `{backend}`")]
    WrongBackend {
        owner: &'static str,
        backend: &'static str,
    },

    // ---- files ----
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// A file was read but its content is not what it claims.
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },

    // ---- models ----
    /// A model's forward pass failed (a framework error, or sage's own seen through the framework).
    #[error("model {model}: {reason}")]
    Model { model: String, reason: String },
}

/// sage's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error from displayable expected/got values.
    pub fn shape(op: &'static str, expected: impl fmt::Display, got: impl fmt::Display) -> Self {
        Error::Shape {
            op,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// An invalid-parameter error.
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
