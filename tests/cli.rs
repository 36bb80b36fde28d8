//! The `sage` command as a user runs it: backend choice, config layers, inputs and their errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use sage::random::{Distribution, Rng, random_qkv};
use sage::{DType, Layout, Shape, io};

fn sage(args: &[&str], env: &[(&str, &str)], dir: Option<&PathBuf>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sage"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SAGE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().unwrap_or_else(|e| panic!("running sage: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The message of a run that must fail as a user error (exit status 2), `what` naming the case.
fn user_error(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    err
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sage-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn write_qkv(path: &PathBuf, q: Shape, kv: Shape, meta: &[(&str, &str)]) {
    let (q, k, v) = random_qkv(
        &mut Rng::new(3),
        q,
        kv,
        DType::F16,
        Layout::Hnd,
        Distribution::Normal,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bytes = io::qkv_to_bytes(&q, &k, &v, meta).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn run_prints_json_with_the_documented_keys() {
    let out = sage(
        &[
            "run",
            "--backend",
            "cpu",
            "--shape",
            "1x2x100x64",
            "--json",
            "--seed",
            "5",
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    for key in [
        "backend",
        "device",
        "mode",
        "granularity",
        "cos",
        "rel_l1",
        "rmse",
        "ms",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {line}");
    }
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["mode"], "int8-fp8", "auto is int8-fp8 on the cpu");
    assert!(v["cos"].as_f64().unwrap_or(0.0) > 0.998, "{line}");
}

#[test]
fn backend_comes_from_flag_env_and_config_in_that_order() {
    let dir = scratch("layers");
    std::fs::write(
        dir.join("sage.toml"),
        "backend = \"cuda\"\nmode = \"int8-fp16\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // config file alone: cuda is unavailable here, and the error says why
    let out = sage(&["run", "--shape", "1x1x8x32"], &[], Some(&dir));
    let err = user_error(&out, "cuda from sage.toml");
    assert!(
        err.contains("cuda") && err.contains("unavailable") && err.lines().count() == 1,
        "{err}"
    );
    // the environment overrides the file, the flag overrides both
    let out = sage(
        &["run", "--shape", "1x1x8x32", "--json"],
        &[("SAGE_BACKEND", "cpu")],
        Some(&dir),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"mode\":\"int8-fp16\""),
        "the file's mode stays"
    );
    let out = sage(
        &[
            "run",
            "--shape",
            "1x1x8x32",
            "--json",
            "--backend",
            "cpu",
            "--mode",
            "exact",
        ],
        &[("SAGE_BACKEND", "wgpu")],
        Some(&dir),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"mode\":\"exact\""));
    // auto falls back and says which backend it chose
    let out = sage(
        &["run", "--shape", "1x1x8x32", "--backend", "auto"],
        &[],
        Some(&dir),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("auto chose"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_config_names_the_key() {
    let dir = scratch("badcfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "granularity = \"per-lane\"\n").unwrap_or_else(|e| panic!("{e}"));
    let out = sage(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap_or(""),
            "--shape",
            "1x1x8x32",
        ],
        &[],
        None,
    );
    let err = user_error(&out, "bad granularity");
    assert!(err.contains("granularity"), "{err}");
    let out = sage(
        &["run", "--shape", "1x1x8x32"],
        &[("SAGE_KV_BLOCK", "65")],
        None,
    );
    let err = user_error(&out, "SAGE_KV_BLOCK=65");
    assert!(err.contains("SAGE_KV_BLOCK"), "{err}");
}

#[test]
fn inputs_from_files_and_their_errors() {
    let dir = scratch("files");
    let good = dir.join("good.safetensors");
    write_qkv(
        &good,
        Shape::new(1, 2, 40, 32),
        Shape::new(1, 2, 40, 32),
        &[("sm_scale", "0.2")],
    );
    let out = sage(
        &[
            "run",
            "--backend",
            "cpu",
            "--input",
            good.to_str().unwrap_or(""),
            "--json",
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("good.safetensors"));

    let mismatched = dir.join("mismatched.safetensors");
    write_qkv(
        &mismatched,
        Shape::new(1, 2, 40, 32),
        Shape::new(1, 3, 40, 32),
        &[],
    );
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap_or_default();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap_or_else(|e| panic!("{e}"));
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header")
        .unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.join("nothere.safetensors");
    for (path, says) in [
        (&mismatched, "multiple"),
        (&truncated, "safetensors"),
        (&garbage, "safetensors"),
        (&missing, "nothere"),
    ] {
        let out = sage(
            &[
                "run",
                "--backend",
                "cpu",
                "--input",
                path.to_str().unwrap_or(""),
            ],
            &[],
            None,
        );
        let err = user_error(&out, &format!("{path:?}"));
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{path:?}: {err}");
    }
}

#[test]
fn info_lists_every_backend() {
    let out = sage(&["info", "--json"], &[], None);
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["backend"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["cuda", "wgpu", "cpu"]);
    let cpu = &v[2];
    assert_eq!(cpu["available"], true);
    assert!(
        cpu["capabilities"]["modes"]
            .as_array()
            .is_some_and(|m| m.len() == 4)
    );
}

/// Where the captured MiniLM inputs are: `SAGE_REAL_QKV`, else `shared/data/real-qkv` beside the repo.
fn real_qkv_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SAGE_REAL_QKV") {
        return PathBuf::from(dir);
    }
    // cargo sets CARGO_MANIFEST_DIR when it runs the test too: prefer that to the compile-time
    // value, which names whichever checkout last built this binary into a shared target dir
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("../shared/data/real-qkv")
}

#[test]
fn calibrate_input_writes_a_plan_of_the_captures() {
    let dir = scratch("calibrate");
    let captures = dir.join("captures");
    std::fs::create_dir_all(&captures).unwrap_or_else(|e| panic!("{e}"));
    for name in ["minilm_p00_l0.safetensors", "minilm_p00_l5.safetensors"] {
        std::fs::copy(real_qkv_dir().join(name), captures.join(name))
            .unwrap_or_else(|e| panic!("real-qkv data is missing ({e}); set SAGE_REAL_QKV"));
    }
    let plan_path = dir.join("plan.json");
    let captures_arg = captures.to_str().unwrap_or("");
    let plan_arg = plan_path.to_str().unwrap_or("");
    for (target, threshold, want) in [
        // the fastest mode on Hopper that scores 0.97 on these captures (int4-fp8 never)
        ("cuda-sm90", "0.97", "int8-fp8"),
        // on the CPU int8-fp16 is the fastest, and it scores 0.99
        ("cpu", "0.97", "int8-fp16"),
        // nothing quantized scores 0.9999: exact
        ("cuda-sm89", "0.9999", "exact"),
    ] {
        let out = sage(
            &[
                "calibrate",
                "--backend",
                "cpu",
                "--input",
                captures_arg,
                "--threshold",
                threshold,
                "--target",
                target,
                "--per-head",
                "--out",
                plan_arg,
            ],
            &[],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let plan = sage::Plan::load(&plan_path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.target, target);
        assert_eq!(plan.heads, 12);
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["minilm_p00_l0", "minilm_p00_l5"]);
        for layer in &plan.layers {
            assert_eq!(layer.mode.name(), want, "{target}: {layer:?}");
            assert_eq!(layer.heads.as_ref().map(Vec::len), Some(12));
            if target == "cuda-sm90" {
                assert!(layer.candidates.iter().all(|c| c.mode.name() != "int4-fp8"));
            }
        }
        assert!(text(&out.stdout).contains("minilm_p00_l5"));
        // each mode scored at the target's kv_block (the Hopper kernel's 128 for int8-fp8)
        let kv = if target == "cuda-sm90" {
            "int8-fp8 128"
        } else {
            "int8-fp8 64"
        };
        assert!(
            text(&out.stdout).contains(kv),
            "{target}: {}",
            text(&out.stdout)
        );
    }
    // a threshold out of range, and a plan that does not load, are one-line errors
    let out = sage(
        &[
            "calibrate",
            "--input",
            captures_arg,
            "--threshold",
            "1.5",
            "--out",
            plan_arg,
        ],
        &[],
        None,
    );
    let err = user_error(&out, "threshold 1.5");
    assert!(err.contains("threshold"), "{err}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"version": 7}"#).unwrap_or_else(|e| panic!("{e}"));
    let out = sage(
        &[
            "model",
            "minilm",
            "--backend",
            "cpu",
            "--plan",
            bad.to_str().unwrap_or(""),
        ],
        &[],
        None,
    );
    let err = user_error(&out, "plan version 7");
    assert!(
        err.contains("version 7 is not supported") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn model_without_its_files_says_how_to_fetch_them() {
    let out = sage(
        &["model", "minilm", "--model-dir", "/nonexistent/minilm"],
        &[],
        None,
    );
    let err = user_error(&out, "no model files");
    assert!(err.contains("scripts/fetch-minilm.sh"), "{err}");
    let out = sage(&["model", "gpt5"], &[], None);
    assert!(text(&out.stderr).contains("minilm"));
}

#[test]
fn model_prints_a_row_per_mode() {
    let dir = sage_candle::minilm::default_model_dir();
    if !dir.join("model.safetensors").is_file()
        && std::env::var("SAGE_SKIP_MODEL").is_ok_and(|v| v == "1")
    {
        println!("skipped (SAGE_SKIP_MODEL=1): no model in {}", dir.display());
        return;
    }
    let dir_arg = dir.to_str().unwrap_or("");
    let out = sage(
        &[
            "model",
            "minilm",
            "--backend",
            "cpu",
            "--model-dir",
            dir_arg,
        ],
        &[],
        None,
    );
    let table = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n(the model comes from scripts/fetch-minilm.sh; SAGE_SKIP_MODEL=1 skips)",
        text(&out.stderr)
    );
    for row in [
        "| exact",
        "| int8-fp16",
        "| int8-fp8 per-thread",
        "| int4-fp8 per-warp +rotate",
    ] {
        assert!(table.contains(row), "no row {row}:\n{table}");
    }
    let out = sage(
        &[
            "model",
            "minilm",
            "--backend",
            "cpu",
            "--mode",
            "int8-fp8",
            "--json",
            "--model-dir",
            dir_arg,
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["attention"], "int8-fp8 per-warp");
    assert!(v["min_cos"].as_f64().unwrap_or(0.0) >= 0.999, "{line}");
}

/// `sage kernels --warm-cache` fills the disk cache with one build per module and dtype (quant.cu
/// whole), so that a GPU's first call compiles nothing; a second fill finds every build there. Bad
/// dtypes and architectures are user errors before anything compiles.
#[test]
fn kernels_warm_cache_fills_the_cache_once() {
    let dir = scratch("warm-cache");
    let cache = dir.join("cache");
    // sage() clears SAGE_*: NVRTC found through SAGE_NVRTC_DIR must still be found
    let nvrtc_dir = std::env::var("SAGE_NVRTC_DIR").unwrap_or_default();
    let env = [
        ("SAGE_CUDA_CACHE_DIR", cache.to_str().unwrap_or_default()),
        ("SAGE_NVRTC_DIR", nvrtc_dir.as_str()),
    ];
    for (arch, dtypes, named) in [
        ("sm_80", "fp16", "fp16"),
        ("sm_70", "f16", "sm_70"),
        ("sm_90", "f16", "sm_90"),
        ("sm_0120", "f16", "sm_0120"),
        ("compute_80", "f16", "compute_80"),
    ] {
        let args = ["kernels", "--arch", arch, "--warm-cache", dtypes];
        let err = user_error(&sage(&args, &env, None), named);
        assert!(err.contains(&format!("`{named}`")), "{err}");
    }
    assert!(!cache.exists());

    let out = sage(
        &["kernels", "--arch", "sm_80", "--warm-cache", "f16,f32"],
        &env,
        None,
    );
    let err = text(&out.stderr);
    if !out.status.success() && err.contains("libnvrtc.so.13) not found") {
        println!("skipped: {err}");
        return;
    }
    assert!(out.status.success(), "{err}");
    // (name, modification time) of every file: a second fill that compiled again would rewrite them
    let files = |d: &PathBuf| -> Vec<(String, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|err| panic!("{err}"));
                (e.file_name().to_string_lossy().into_owned(), modified)
            })
            .collect();
        v.sort();
        v
    };
    let first = files(&cache);
    // quant.cu once, attn_mma / attn_exact / attn_wgmma once per dtype
    assert_eq!(first.len(), 7, "{first:?}");
    assert!(
        first
            .iter()
            .all(|(f, _)| f.ends_with(".cubin") && f.contains("-sm_80-")),
        "{first:?}"
    );
    let again = sage(
        &["kernels", "--arch", "sm_80", "--warm-cache", "f32,f16"],
        &env,
        None,
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(files(&cache), first);

    // any compute capability from 8.0 up, as the backend names it (sm_90a for 9.0)
    let cache120 = dir.join("cache120");
    let env120 = [
        ("SAGE_CUDA_CACHE_DIR", cache120.to_str().unwrap_or_default()),
        ("SAGE_NVRTC_DIR", nvrtc_dir.as_str()),
    ];
    let args = ["kernels", "--arch", "sm_120", "--warm-cache", "f16"];
    let out = sage(&args, &env120, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let built = files(&cache120);
    assert_eq!(built.len(), 4, "{built:?}");
    assert!(
        built.iter().all(|(f, _)| f.contains("-sm_120-")),
        "{built:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
