//! The `sage` command: `info`, `run`, `bench`, `kernels`, `model`, `calibrate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

mod model;

use sage::random::{Distribution, Rng, random_qkv};
use sage::{
    AttentionBackend, AttentionParams, ConfigLayer, DType, Error, Layout, Metrics, Result, Shape,
    Tensor, io, reference_attention,
};

#[derive(Parser)]
#[command(
    name = "sage",
    version,
    about = "SageAttention2 in Rust: quantized attention on CPU, wgpu and CUDA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every backend: whether it is available (and why not), its device and capabilities.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs attention on random data or safetensors files and compares with the exact f64 reference.
    Run(Box<RunArgs>),
    /// Times every mode on resident inputs: a table of TOPS, JSON lines and an SVG plot.
    Bench(Box<BenchArgs>),
    /// Runs a real model (all-MiniLM-L6-v2) with sage attention and compares it with exact attention.
    Model(Box<ModelArgs>),
    /// Scores every mode per layer (and head) on calibration inputs and writes a plan.
    Calibrate(Box<CalibrateArgs>),
    /// Compiles every CUDA kernel with NVRTC for an architecture (no GPU needed).
    Kernels {
        /// The device's architecture as the backend builds for it: sm_80, sm_86, sm_89, sm_90a (not
        /// sm_90), sm_100, sm_120, ... (repeatable).
        #[arg(long, required = true)]
        arch: Vec<String>,
        /// Write each CUBIN here (to ship; `--warm-cache` fills the cache itself).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Instead of the check: fill the disk cache (`SAGE_CUDA_CACHE_DIR`, else
        /// $XDG_CACHE_HOME/sage/cuda or ~/.cache/sage/cuda) with the builds that runs on inputs of
        /// these dtypes load (f16, bf16, f32; comma-separated), so that the GPU's first call compiles
        /// nothing (a first f16 call on an H200 otherwise spends about a minute in NVRTC). The cache
        /// is keyed by the kernel text, the options and the NVRTC version, so it must be filled with
        /// the NVRTC major.minor the GPU machine loads.
        #[arg(long, value_name = "DTYPES", conflicts_with = "out")]
        warm_cache: Option<String>,
    },
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    settings: Settings,
    /// Modes to time, comma-separated (default: every mode the device runs).
    #[arg(long)]
    modes: Option<String>,
    /// Shapes BxHxNxD, comma-separated (default: torch_sdpa.py's set on GPUs, 1x4x1024x64 on the CPU).
    #[arg(long)]
    shapes: Option<String>,
    /// no, yes or both.
    #[arg(
        long = "causal-set",
        value_name = "no|yes|both",
        default_value = "both"
    )]
    causal_set: String,
    /// Dtype of the inputs.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Untimed calls before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed calls (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write sage's measurements as JSON lines (torch_sdpa.py's schema).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw TOPS against N as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Merge these JSON lines (e.g. torch_sdpa.py --json) into the table and the plot.
    #[arg(long)]
    baseline: Vec<PathBuf>,
}

/// Settings shared by the commands that run attention; each overrides the config file and `SAGE_*`.
#[derive(Args, Clone, Debug)]
struct Settings {
    /// A TOML config file (default: ./sage.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// auto, cpu, wgpu or cuda.
    #[arg(long)]
    backend: Option<String>,
    /// int4-fp8, int8-fp8, int8-fp16, exact or auto.
    #[arg(long)]
    mode: Option<String>,
    /// per-block, per-warp or per-thread.
    #[arg(long)]
    granularity: Option<String>,
    /// Keys per online-softmax block: 64 or 128.
    #[arg(long)]
    kv_block: Option<String>,
    /// Bottom-right causal mask.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    causal: Option<String>,
    /// Subtract Q block means (default: on for int4-fp8).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    smooth_q: Option<String>,
    /// Subtract V channel means.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    smooth_v: Option<String>,
    /// Hadamard-rotate Q and K before quantizing.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rotate: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    settings: Settings,
    /// Random inputs of shape BxHxNxD (Nq = Nk = N).
    #[arg(long, conflicts_with = "input")]
    shape: Option<String>,
    /// K/V heads for random inputs (GQA); default: H.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Key count for random inputs; default: N.
    #[arg(long)]
    nk: Option<usize>,
    /// Dtype of random inputs: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Layout of random inputs: HND or NHD.
    #[arg(long, default_value = "HND")]
    layout: String,
    /// Seed of random inputs (default: fresh each run, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// A safetensors file with q, k, v, or a directory of them.
    #[arg(long)]
    input: Option<PathBuf>,
    /// One JSON object per input instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// The model: `minilm` (all-MiniLM-L6-v2).
    #[arg(value_name = "MODEL")]
    name: String,
    #[command(flatten)]
    settings: Settings,
    /// The model's files (default: $SAGE_MODEL_DIR, else ~/.cache/sage/minilm, which
    /// scripts/fetch-minilm.sh fills).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Also run the per-layer modes of a plan from `sage calibrate`.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Sentence pairs, `kind<TAB>sentence<TAB>sentence` lines (default: the built-in ones).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// One JSON object per row instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    settings: Settings,
    /// Calibrate a model that runs here: `minilm`.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    model: Option<String>,
    /// Captured q/k/v safetensors (a file or a directory, as `sage run --input`); each file is one
    /// layer of the plan, named after the file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// The score `cos * (1 - rel_l1)` every choice must meet, in [0, 1].
    #[arg(long)]
    threshold: f64,
    /// Where to write the plan (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The device to rank modes for: cpu, wgpu, cuda-sm80, cuda-sm86, cuda-sm89, cuda-sm90
    /// (default: the backend that runs the calibration).
    #[arg(long)]
    target: Option<String>,
    /// Choose per head as well as per layer.
    #[arg(long)]
    per_head: bool,
    /// The model's files (as for `sage model`).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Calibration text for a model, one input per line (default: the built-in text).
    #[arg(long)]
    text: Option<PathBuf>,
}

impl Settings {
    /// Config file, then environment, then these flags.
    fn layers(&self) -> Result<ConfigLayer> {
        let file = match &self.config {
            Some(path) => ConfigLayer::from_toml_file(path)?,
            None if Path::new("sage.toml").is_file() => {
                ConfigLayer::from_toml_file(Path::new("sage.toml"))?
            }
            None => ConfigLayer::default(),
        };
        let mut flags = ConfigLayer::default();
        for (key, value) in [
            ("backend", &self.backend),
            ("mode", &self.mode),
            ("granularity", &self.granularity),
            ("kv_block", &self.kv_block),
            ("causal", &self.causal),
            ("smooth_q", &self.smooth_q),
            ("smooth_v", &self.smooth_v),
            ("rotate", &self.rotate),
        ] {
            if let Some(v) = value {
                flags.set(key, v, &format!("flag --{}", key.replace('_', "-")))?;
            }
        }
        Ok(file.merge(ConfigLayer::from_env()?).merge(flags))
    }
}

/// One measured input, as `sage run --json` prints it.
#[derive(Serialize)]
struct RunRecord {
    input: String,
    backend: &'static str,
    device: String,
    mode: String,
    granularity: String,
    kv_block: usize,
    causal: bool,
    shape: String,
    dtype: String,
    cos: f64,
    rel_l1: f64,
    rmse: f64,
    max_abs: f64,
    ms: f64,
}

fn parse_shape(s: &str) -> Result<[usize; 4]> {
    let parts: Vec<usize> = s
        .to_ascii_lowercase()
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::param(
                "shape",
                format!("`{s}` is not BxHxNxD (four whole numbers)"),
            )
        })?;
    match parts[..] {
        [b, h, n, d] => Ok([b, h, n, d]),
        _ => Err(Error::param(
            "shape",
            format!("`{s}` is not BxHxNxD (four numbers)"),
        )),
    }
}

struct Input {
    name: String,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sm_scale: Option<f32>,
}

fn measure(
    backend: &dyn AttentionBackend,
    input: &Input,
    base: &AttentionParams,
) -> Result<RunRecord> {
    let params = AttentionParams {
        sm_scale: input.sm_scale.or(base.sm_scale),
        ..*base
    };
    let caps = backend.capabilities();
    let problem = sage::Problem::new(
        &input.q.meta(),
        &input.k.meta(),
        &input.v.meta(),
        &params,
        &caps,
    )?;
    let start = Instant::now();
    let out = backend.attention(&input.q, &input.k, &input.v, &params)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let reference = reference_attention(&input.q, &input.k, &input.v, &params)?;
    let m = Metrics::compare(&out.out.to_f32_hnd(), &reference.out);
    let s = input.q.shape();
    Ok(RunRecord {
        input: input.name.clone(),
        backend: backend.name(),
        device: caps.device,
        mode: problem.mode.to_string(),
        granularity: problem.granularity.to_string(),
        kv_block: problem.kv_block,
        causal: problem.causal,
        shape: format!("{}x{}x{}x{}", s.batch, s.heads, s.seq, s.head_dim),
        dtype: input.q.dtype().to_string(),
        cos: m.cos,
        rel_l1: m.rel_l1,
        rmse: m.rmse,
        max_abs: m.max_abs,
        ms,
    })
}

fn run(args: &RunArgs) -> Result<()> {
    let config = args.settings.layers()?.resolve();
    let (backend, note) = sage::open(config.backend)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let mut inputs = Vec::new();
    if let Some(path) = &args.input {
        for file in io::list_inputs(path)? {
            let f = io::load_qkv(&file)?;
            inputs.push(Input {
                name: file.display().to_string(),
                q: f.q,
                k: f.k,
                v: f.v,
                sm_scale: f.sm_scale,
            });
        }
    } else {
        let [b, h, n, d] = parse_shape(args.shape.as_deref().unwrap_or("1x8x1024x128"))?;
        let dtype: DType = args.dtype.parse().map_err(|e| Error::param("dtype", e))?;
        let layout: Layout = args.layout.parse().map_err(|e| Error::param("layout", e))?;
        let seed = args.seed.unwrap_or_else(Rng::fresh_seed);
        let kv = Shape::new(b, args.kv_heads.unwrap_or(h), args.nk.unwrap_or(n), d);
        let (q, k, v) = random_qkv(
            &mut Rng::new(seed),
            Shape::new(b, h, n, d),
            kv,
            dtype,
            layout,
            Distribution::KOutliers,
        )?;
        inputs.push(Input {
            name: format!("random(seed={seed})"),
            q,
            k,
            v,
            sm_scale: None,
        });
    }
    let mut records = Vec::new();
    for input in &inputs {
        let r = measure(backend.as_ref(), input, &config.params)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&r).map_err(|e| Error::param("json", e.to_string()))?
            );
        } else {
            println!(
                "{:<44} {} {} {} {} kv_block={} cos={:.6} rel_l1={:.5} rmse={:.3e} max_abs={:.3e} {:.1} ms",
                r.input,
                r.backend,
                r.shape,
                r.mode,
                r.granularity,
                r.kv_block,
                r.cos,
                r.rel_l1,
                r.rmse,
                r.max_abs,
                r.ms
            );
        }
        records.push(r);
    }
    if !args.json && records.len() > 1 {
        let n = records.len() as f64;
        println!(
            "mean over {} inputs: cos={:.6} rel_l1={:.5} on {} ({})",
            records.len(),
            records.iter().map(|r| r.cos).sum::<f64>() / n,
            records.iter().map(|r| r.rel_l1).sum::<f64>() / n,
            records[0].backend,
            records[0].device
        );
    }
    Ok(())
}

const GPU_SHAPES: &str = "8x32x1024x128,8x32x4096x128,2x32x16384x128,8x32x4096x64,2x32x16384x64";
const CPU_SHAPES: &str = "1x4x1024x64";

fn bench(args: &BenchArgs) -> Result<()> {
    let config = args.settings.layers()?.resolve();
    let (backend, note) = sage::open(config.backend)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let caps = backend.capabilities();
    let modes: Vec<sage::Mode> = match &args.modes {
        Some(list) => list
            .split(',')
            .map(|m| m.trim().parse().map_err(|e| Error::param("modes", e)))
            .collect::<Result<_>>()?,
        None => caps.modes.clone(),
    };
    let default_shapes = if backend.name() == "cpu" {
        CPU_SHAPES
    } else {
        GPU_SHAPES
    };
    let causal = match args.causal_set.as_str() {
        "no" => vec![false],
        "yes" => vec![true],
        "both" => vec![false, true],
        other => {
            return Err(Error::param(
                "causal-set",
                format!("`{other}` is not no, yes or both"),
            ));
        }
    };
    let plan = sage::bench::BenchPlan {
        shapes: sage::bench::parse_shapes(args.shapes.as_deref().unwrap_or(default_shapes))?,
        modes,
        causal,
        params: config.params,
        dtype: args.dtype.parse().map_err(|e| Error::param("dtype", e))?,
        warmup: args.warmup,
        iters: args.iters,
        seed: args.seed,
    };
    let total = (plan.shapes.len() * plan.causal.len() * plan.modes.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} on {}", backend.name(), caps.device));
    let mut records = sage::bench::run(backend.as_ref(), &plan, |label| {
        bar.inc(1);
        bar.set_message(label.to_string());
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.json {
        sage::bench::write_records(path, &records)?;
    }
    for path in &args.baseline {
        records.extend(sage::bench::read_records(path)?);
    }
    let kv_block = match plan.params.kv_block {
        Some(kv) => kv.to_string(),
        None => {
            let per_mode: Vec<String> = plan
                .modes
                .iter()
                .map(|m| format!("{m} {}", caps.default_kv_block_for(*m)))
                .collect();
            format!("default ({})", per_mode.join(", "))
        }
    };
    // the options a run set beyond the defaults, so that the table says what it measured
    let mut options = String::new();
    if let Some(q) = plan.params.smooth_q {
        options += &format!(", smooth_q {}", if q { "on" } else { "off" });
    }
    if plan.params.smooth_v {
        options += ", smooth_v on";
    }
    if plan.params.rotate {
        options += ", rotate on";
    }
    println!(
        "{} ({}), {} inputs, granularity {}, kv_block {kv_block}{options}, median of {} calls after {} warm-up",
        caps.device,
        backend.name(),
        plan.dtype,
        plan.params.granularity,
        plan.iters,
        plan.warmup
    );
    print!("{}", sage::bench::table(&records));
    if let Some(path) = &args.plot {
        sage::bench::plot(&records, path, &format!("sage on {}", caps.device))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// `sage kernels`: one line per (architecture, kernel file), `ok` and its size or the compiler's log,
/// then ptxas's report on entries that spill or that it slowed down. No source may draw a warning
/// from the compiler's front end (each is a FAIL line). The Hopper kernel must do neither:
/// a serialized wgmma (ptxas C75xx) or a spill in its loop costs a large share of its speed, and only
/// this report shows it without a GPU.
fn kernels(archs: &[String], out: Option<&Path>) -> Result<()> {
    check_archs(archs)?;
    let (major, minor) = sage_cuda::nvrtc::nvrtc_version()?;
    println!("NVRTC {major}.{minor}");
    let mut failed = 0;
    for arch in archs {
        for module in sage_cuda::Module::ALL {
            let start = Instant::now();
            match sage_cuda::nvrtc::compile_with_report(module, arch) {
                Ok((cubin, report)) => {
                    println!(
                        "ok   {arch:<7} {:<14} {:>8} bytes  {:.1} s  {} entries, at most {} registers",
                        module.file(),
                        cubin.len(),
                        start.elapsed().as_secs_f64(),
                        report.entries.len(),
                        report
                            .entries
                            .iter()
                            .map(|e| e.registers)
                            .max()
                            .unwrap_or(0)
                    );
                    let strict = module == sage_cuda::Module::AttnWgmma;
                    for e in &report.entries {
                        if e.spill_bytes > 0 {
                            println!("       {}: {} bytes of spill stores", e.name, e.spill_bytes);
                        }
                        for w in &e.performance_warnings {
                            println!("       {w}");
                        }
                        if strict && (e.spill_bytes > 0 || !e.performance_warnings.is_empty()) {
                            failed += 1;
                            println!(
                                "FAIL {arch:<7} {}: the Hopper kernel must neither spill nor serialize its wgmmas",
                                e.name
                            );
                        }
                    }
                    for (f, bytes) in &report.callee_spills {
                        println!(
                            "       {f} (called by the entries): {bytes} bytes of spill stores"
                        );
                    }
                    for w in &report.other_warnings {
                        println!("       {w}");
                    }
                    if strict
                        && (!report.callee_spills.is_empty() || !report.other_warnings.is_empty())
                    {
                        failed += 1;
                        println!(
                            "FAIL {arch:<7} {}: the Hopper kernel must neither spill nor serialize its wgmmas",
                            module.file()
                        );
                    }
                    for w in &report.compiler_warnings {
                        failed += 1;
                        println!("FAIL {arch:<7} {}: {w}", module.file());
                    }
                    if let Some(dir) = out {
                        let io = |e: std::io::Error| Error::Io {
                            path: dir.display().to_string(),
                            reason: e.to_string(),
                        };
                        std::fs::create_dir_all(dir).map_err(io)?;
                        let name =
                            format!("{}.{arch}.cubin", module.file().trim_end_matches(".cu"));
                        std::fs::write(dir.join(name), &cubin).map_err(io)?;
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL {arch:<7} {:<14} {e}", module.file());
                }
            }
        }
    }
    if failed > 0 {
        return Err(Error::Compile {
            kernel: "sage kernels".into(),
            log: format!("{failed} check(s) failed (the FAIL lines above)"),
        });
    }
    Ok(())
}

/// The architectures the CUDA backend builds for (`sage_cuda::nvrtc::arch_for`): a compute
/// capability of 8.0 or above as `sm_<major><minor>`, with sm_90a for 9.0 (its wgmma kernels need the
/// `a` features). Whether NVRTC knows one is NVRTC's to say.
fn check_archs(archs: &[String]) -> Result<()> {
    // the digits name a compute capability; the backend's own name for it must be the whole string
    let builds_for = |arch: &str| {
        let digits: String = arch
            .strip_prefix("sm_")
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse::<i32>()
            .is_ok_and(|n| n >= 80 && sage_cuda::nvrtc::arch_for(n / 10, n % 10) == arch)
    };
    match archs.iter().find(|a| !builds_for(a)) {
        Some(arch) => Err(Error::param(
            "arch",
            format!(
                "`{arch}` is not an architecture the CUDA backend builds for: sm_<major><minor> of a \
                 compute capability 8.0 or above (sm_80, sm_86, sm_89, sm_100, sm_120, ...), and \
                 sm_90a (not sm_90) for 9.0"
            ),
        )),
        None => Ok(()),
    }
}

/// `sage kernels --warm-cache`: the disk cache's builds for `archs` and the input dtypes in `dtypes`.
fn warm_cache(archs: &[String], dtypes: &str) -> Result<()> {
    check_archs(archs)?;
    let dtypes = dtypes
        .split(',')
        .map(|d| {
            sage_cuda::nvrtc::EntryDtype::parse(d.trim()).ok_or_else(|| {
                Error::param("warm-cache", format!("`{d}` is not one of f16, bf16, f32"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dir = sage_cuda::nvrtc::cache_dir().ok_or_else(|| {
        Error::param(
            "warm-cache",
            "no cache folder: set SAGE_CUDA_CACHE_DIR (or HOME)",
        )
    })?;
    let (major, minor) = sage_cuda::nvrtc::nvrtc_version()?;
    println!("NVRTC {major}.{minor}, cache {}", dir.display());
    for arch in archs {
        for module in sage_cuda::Module::ALL {
            for only in sage_cuda::nvrtc::builds(module, &dtypes) {
                let start = Instant::now();
                let cubin = sage_cuda::nvrtc::cubin(module, arch, only)?;
                // a run tolerates a cache it cannot write; this command exists to write it
                let file = sage_cuda::nvrtc::cache_file(module, arch, only)?;
                if !file.as_ref().is_some_and(|f| f.is_file()) {
                    return Err(Error::param(
                        "warm-cache",
                        format!(
                            "could not write {} (is {} writable?)",
                            file.map_or_else(|| "the cache".into(), |f| f.display().to_string()),
                            dir.display()
                        ),
                    ));
                }
                println!(
                    "ok   {arch:<7} {:<14} {:<5} {:>8} bytes  {:.1} s",
                    module.file(),
                    only.map_or("all", |d| d.name()),
                    cubin.len(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

fn info(json: bool) -> Result<()> {
    let all = sage::probe_all();
    if json {
        let text =
            serde_json::to_string_pretty(&all).map_err(|e| Error::param("json", e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    for s in &all {
        match &s.capabilities {
            Some(c) => {
                let modes: Vec<&str> = c.modes.iter().map(|m| m.name()).collect();
                println!("{:<5} available    {}", s.backend, c.device);
                println!(
                    "      modes {} (auto = {}), head dims up to {} (native {:?}), kv_block {:?} (default {})",
                    modes.join(", "),
                    c.auto_mode,
                    c.max_head_dim,
                    c.native_head_dims,
                    c.kv_blocks,
                    c.default_kv_block
                );
                for (m, kv) in &c.mode_kv_blocks {
                    println!(
                        "      {m}: kv_block {kv:?} (default {})",
                        c.default_kv_block_for(*m)
                    );
                }
            }
            None => println!(
                "{:<5} unavailable  {}",
                s.backend,
                s.reason.as_deref().unwrap_or("unknown reason")
            ),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info { json } => info(*json),
        Command::Run(args) => run(args),
        Command::Bench(args) => bench(args),
        Command::Model(args) => model::run(args),
        Command::Calibrate(args) => model::calibrate(args),
        Command::Kernels {
            arch,
            out,
            warm_cache: None,
        } => kernels(arch, out.as_deref()),
        Command::Kernels {
            arch,
            warm_cache: Some(dtypes),
            ..
        } => warm_cache(arch, dtypes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
