//! What a caller chooses: the backend, the mode and its options. Settings come in layers, a TOML file,
//! then `SAGE_*` environment variables, then command-line flags; a later layer wins key by key.
//! Unknown keys and bad values are errors that name the key and where it came from.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Quantization mode (ALGORITHM.md, "Modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// INT4 QKᵀ, FP8 PV (SageAttention2-4b).
    #[serde(rename = "int4-fp8")]
    Int4Fp8,
    /// INT8 QKᵀ, FP8 PV (SageAttention2-8b).
    #[serde(rename = "int8-fp8")]
    Int8Fp8,
    /// INT8 QKᵀ, f16 PV (SageAttention1-style).
    #[serde(rename = "int8-fp16")]
    Int8Fp16,
    /// Unquantized flash attention in f32: the baseline.
    #[serde(rename = "exact")]
    Exact,
    /// The backend's own choice for its device (`Capabilities::auto_mode`).
    #[serde(rename = "auto")]
    Auto,
}

impl Mode {
    /// The modes that compute something (all but `auto`).
    pub const CONCRETE: [Mode; 4] = [Mode::Int4Fp8, Mode::Int8Fp8, Mode::Int8Fp16, Mode::Exact];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Int4Fp8 => "int4-fp8",
            Mode::Int8Fp8 => "int8-fp8",
            Mode::Int8Fp16 => "int8-fp16",
            Mode::Exact => "exact",
            Mode::Auto => "auto",
        }
    }

    /// True for the modes that quantize (everything but `exact`).
    pub fn is_quantized(self) -> bool {
        matches!(self, Mode::Int4Fp8 | Mode::Int8Fp8 | Mode::Int8Fp16)
    }

    /// Largest code of the QKᵀ operands: 7 (INT4) or 127 (INT8).
    pub fn qk_qmax(self) -> Option<i32> {
        match self {
            Mode::Int4Fp8 => Some(7),
            Mode::Int8Fp8 | Mode::Int8Fp16 => Some(127),
            Mode::Exact | Mode::Auto => None,
        }
    }

    /// True when P and V go through FP8 E4M3.
    pub fn is_fp8_pv(self) -> bool {
        matches!(self, Mode::Int4Fp8 | Mode::Int8Fp8)
    }

    /// `smooth_q` when the caller does not say: on for INT4, off otherwise (ALGORITHM.md Step 2).
    pub fn default_smooth_q(self) -> bool {
        matches!(self, Mode::Int4Fp8)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "int4-fp8" => Ok(Mode::Int4Fp8),
            "int8-fp8" => Ok(Mode::Int8Fp8),
            "int8-fp16" => Ok(Mode::Int8Fp16),
            "exact" => Ok(Mode::Exact),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!(
                "`{s}` is not a mode (int4-fp8, int8-fp8, int8-fp16, exact, auto)"
            )),
        }
    }
}

/// Size of the Q and K scale groups (ALGORITHM.md Step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    #[serde(rename = "per-block")]
    PerBlock,
    #[serde(rename = "per-warp")]
    PerWarp,
    #[serde(rename = "per-thread")]
    PerThread,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [
        Granularity::PerBlock,
        Granularity::PerWarp,
        Granularity::PerThread,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Granularity::PerBlock => "per-block",
            Granularity::PerWarp => "per-warp",
            Granularity::PerThread => "per-thread",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "per-block" => Ok(Granularity::PerBlock),
            "per-warp" => Ok(Granularity::PerWarp),
            "per-thread" => Ok(Granularity::PerThread),
            _ => Err(format!(
                "`{s}` is not a granularity (per-block, per-warp, per-thread)"
            )),
        }
    }
}

/// Which backend runs the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA if present, else a hardware wgpu adapter, else the CPU.
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendChoice {
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Wgpu => "wgpu",
            BackendChoice::Cuda => "cuda",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cuda" => Ok(BackendChoice::Cuda),
            _ => Err(format!("`{s}` is not a backend (auto, cpu, wgpu, cuda)")),
        }
    }
}

/// Everything one attention call takes besides Q, K and V.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionParams {
    pub mode: Mode,
    pub granularity: Granularity,
    /// Subtract per-block Q means (Step 2); `None` takes the mode's default.
    pub smooth_q: Option<bool>,
    /// Subtract the V channel means (Step 7).
    pub smooth_v: bool,
    /// Hadamard-rotate Q' and K' before quantizing (Step 2b).
    pub rotate: bool,
    /// Keys per online-softmax block (64 or 128); `None` takes the backend's default.
    pub kv_block: Option<usize>,
    /// Bottom-right aligned causal mask (Step 5).
    pub causal: bool,
    /// Softmax scale; `None` is 1/sqrt(D) of the caller's D.
    pub sm_scale: Option<f32>,
    /// Also return the natural log-sum-exp of the logits, `[B, Hq, Nq]`.
    pub return_lse: bool,
}

impl Default for AttentionParams {
    fn default() -> Self {
        AttentionParams {
            mode: Mode::Auto,
            granularity: Granularity::PerWarp,
            smooth_q: None,
            smooth_v: false,
            rotate: false,
            kv_block: None,
            causal: false,
            sm_scale: None,
            return_lse: false,
        }
    }
}

impl AttentionParams {
    /// Parameters of `mode` with every other option at its default.
    pub fn with_mode(mode: Mode) -> Self {
        AttentionParams {
            mode,
            ..Default::default()
        }
    }
}

/// The keys a config layer accepts, in every form: TOML key, `SAGE_` + upper case, `--` flag.
pub const CONFIG_KEYS: [&str; 8] = [
    "backend",
    "mode",
    "granularity",
    "smooth_q",
    "smooth_v",
    "rotate",
    "kv_block",
    "causal",
];

/// `SAGE_*` variables that belong to a backend or the test harness, not to the config layers.
pub const ENV_PASSTHROUGH: [&str; 22] = [
    "SAGE_WGPU_ADAPTER",
    "SAGE_CUDA_CACHE_DIR",
    "SAGE_KERNEL_DIR",
    "SAGE_CUDA_DEVICE",
    "SAGE_CUDA_POISON",
    "SAGE_CUDA_WGMMA",
    "SAGE_CUDA_WGMMA_CTA",
    "SAGE_CUDA_Q_ROWS",
    "SAGE_CUDA_FUSE_Q",
    "SAGE_CUDA_K_ROWS",
    "SAGE_CUDA_V_COLS",
    "SAGE_CUDA_V_CLUSTER",
    "SAGE_CUDA_POOL_KEEP",
    "SAGE_CUDA_PDL",
    "SAGE_NVRTC_DIR",
    "SAGE_REQUIRE",
    "SAGE_SEED",
    "SAGE_REAL_QKV",
    "SAGE_BENCH_N",
    "SAGE_BENCH_BACKENDS",
    "SAGE_MODEL_DIR",
    "SAGE_SKIP_MODEL",
];

/// One layer of settings: each key set or not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigLayer {
    pub backend: Option<BackendChoice>,
    pub mode: Option<Mode>,
    pub granularity: Option<Granularity>,
    pub smooth_q: Option<bool>,
    pub smooth_v: Option<bool>,
    pub rotate: Option<bool>,
    pub kv_block: Option<usize>,
    pub causal: Option<bool>,
}

fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "`{s}` is not a boolean (true/false, 1/0, yes/no, on/off)"
        )),
    }
}

fn parse_kv_block(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v @ (64 | 128)) => Ok(v),
        _ => Err(format!("`{s}` is not a kv_block (64 or 128)")),
    }
}

impl ConfigLayer {
    /// Sets `key` from its text form; `origin` names the layer in errors.
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<()> {
        let bad = |reason: String| Error::BadValue {
            key: key.to_string(),
            origin: origin.to_string(),
            reason,
        };
        match key {
            "backend" => self.backend = Some(value.parse().map_err(bad)?),
            "mode" => self.mode = Some(value.parse().map_err(bad)?),
            "granularity" => self.granularity = Some(value.parse().map_err(bad)?),
            "smooth_q" => self.smooth_q = Some(parse_bool(value).map_err(bad)?),
            "smooth_v" => self.smooth_v = Some(parse_bool(value).map_err(bad)?),
            "rotate" => self.rotate = Some(parse_bool(value).map_err(bad)?),
            "kv_block" => self.kv_block = Some(parse_kv_block(value).map_err(bad)?),
            "causal" => self.causal = Some(parse_bool(value).map_err(bad)?),
            _ => {
                return Err(Error::UnknownKey {
                    key: key.to_string(),
                    origin: origin.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Parses a TOML document of top-level `key = value` lines.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Format {
            path: origin.to_string(),
            reason: format!("not valid TOML: {}", e.message()),
        })?;
        let mut layer = ConfigLayer::default();
        for (key, value) in &table {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    if !CONFIG_KEYS.contains(&key.as_str()) {
                        return Err(Error::UnknownKey {
                            key: key.clone(),
                            origin: origin.to_string(),
                        });
                    }
                    return Err(Error::BadValue {
                        key: key.clone(),
                        origin: origin.to_string(),
                        reason: format!(
                            "expected a string, integer or boolean, got a {}",
                            other.type_str()
                        ),
                    });
                }
            };
            layer.set(key, &text, origin)?;
        }
        Ok(layer)
    }

    /// Reads a TOML config file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        ConfigLayer::from_toml_str(&text, &path.display().to_string())
    }

    /// The `SAGE_<KEY>` variables among `vars`; an unknown `SAGE_*` variable is an error.
    pub fn from_env_vars<I>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layer = ConfigLayer::default();
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("SAGE_") else {
                continue;
            };
            if ENV_PASSTHROUGH.contains(&name.as_str()) {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let origin = format!("environment variable {name}");
            if !CONFIG_KEYS.contains(&key.as_str()) {
                return Err(Error::UnknownKey { key: name, origin });
            }
            layer.set(&key, &value, &origin)?;
        }
        Ok(layer)
    }

    /// The process environment's `SAGE_*` variables.
    pub fn from_env() -> Result<Self> {
        ConfigLayer::from_env_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// `self` with every key that `over` sets replaced.
    pub fn merge(self, over: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            backend: over.backend.or(self.backend),
            mode: over.mode.or(self.mode),
            granularity: over.granularity.or(self.granularity),
            smooth_q: over.smooth_q.or(self.smooth_q),
            smooth_v: over.smooth_v.or(self.smooth_v),
            rotate: over.rotate.or(self.rotate),
            kv_block: over.kv_block.or(self.kv_block),
            causal: over.causal.or(self.causal),
        }
    }

    /// The settings with defaults for every key left unset.
    pub fn resolve(&self) -> Config {
        let defaults = AttentionParams::default();
        Config {
            backend: self.backend.unwrap_or(BackendChoice::Auto),
            params: AttentionParams {
                mode: self.mode.unwrap_or(defaults.mode),
                granularity: self.granularity.unwrap_or(defaults.granularity),
                smooth_q: self.smooth_q,
                smooth_v: self.smooth_v.unwrap_or(defaults.smooth_v),
                rotate: self.rotate.unwrap_or(defaults.rotate),
                kv_block: self.kv_block,
                causal: self.causal.unwrap_or(defaults.causal),
                ..defaults
            },
        }
    }
}

/// Resolved settings: a backend choice and the attention parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub backend: BackendChoice,
    pub params: AttentionParams,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_merge_with_the_later_winning() {
        let file = ConfigLayer::from_toml_str(
            "backend = \"cpu\"\nmode = \"int4-fp8\"\nkv_block = 128\nrotate = true\n",
            "sage.toml",
        )
        .unwrap();
        let envl = ConfigLayer::from_env_vars(env(&[
            ("SAGE_MODE", "int8-fp8"),
            ("SAGE_GRANULARITY", "per-thread"),
            ("SAGE_WGPU_ADAPTER", "llvmpipe"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        let mut flags = ConfigLayer::default();
        flags
            .set("granularity", "per-block", "flag --granularity")
            .unwrap();
        let cfg = file.merge(envl).merge(flags).resolve();
        assert_eq!(cfg.backend, BackendChoice::Cpu);
        assert_eq!(cfg.params.mode, Mode::Int8Fp8);
        assert_eq!(cfg.params.granularity, Granularity::PerBlock);
        assert_eq!(cfg.params.kv_block, Some(128));
        assert!(cfg.params.rotate);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = ConfigLayer::from_toml_str("mdoe = \"exact\"", "sage.toml").unwrap_err();
        assert!(
            e.to_string().contains("mdoe") && e.to_string().contains("sage.toml"),
            "{e}"
        );
        let e = ConfigLayer::from_toml_str("kv_block = 100", "f.toml").unwrap_err();
        assert!(
            matches!(&e, Error::BadValue { key, .. } if key == "kv_block"),
            "{e}"
        );
        let e = ConfigLayer::from_toml_str("causal = [1]", "f.toml").unwrap_err();
        assert!(
            matches!(&e, Error::BadValue { key, .. } if key == "causal"),
            "{e}"
        );
        let e = ConfigLayer::from_toml_str("mode = ", "f.toml").unwrap_err();
        assert!(matches!(e, Error::Format { .. }));
        let e = ConfigLayer::from_env_vars(env(&[("SAGE_MOD", "exact")])).unwrap_err();
        assert!(e.to_string().contains("SAGE_MOD"), "{e}");
        let e = ConfigLayer::from_env_vars(env(&[("SAGE_BACKEND", "tpu")])).unwrap_err();
        assert!(
            e.to_string().contains("SAGE_BACKEND") && e.to_string().contains("tpu"),
            "{e}"
        );
    }

    #[test]
    fn names_round_trip() {
        for m in Mode::CONCRETE.iter().chain([Mode::Auto].iter()) {
            assert_eq!(m.name().parse::<Mode>().unwrap(), *m);
        }
        for g in Granularity::ALL {
            assert_eq!(g.name().parse::<Granularity>().unwrap(), g);
        }
    }
}
