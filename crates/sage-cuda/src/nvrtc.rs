//! Kernel compilation: NVRTC turns `kernels/*.cu` into a CUBIN for the exact architecture (the GPU
//! machines' CUDA 13.0 driver rejects PTX from a newer NVRTC; a CUBIN sidesteps PTX versions), cached
//! on disk by source hash, architecture and NVRTC version so the second process starts warm.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::PathBuf;
use std::sync::OnceLock;

use sage_core::{Error, Result};
use sha2::{Digest, Sha256};

use crate::NAME;

/// The common headers, in the order the amalgamation needs them (kernels/ABI.md, "Compiling").
const HEADERS: [(&str, &str); 12] = [
    (
        "prelude.cuh",
        include_str!("../../../kernels/common/prelude.cuh"),
    ),
    ("ptx.cuh", include_str!("../../../kernels/common/ptx.cuh")),
    (
        "dtype.cuh",
        include_str!("../../../kernels/common/dtype.cuh"),
    ),
    ("fp8.cuh", include_str!("../../../kernels/common/fp8.cuh")),
    ("int4.cuh", include_str!("../../../kernels/common/int4.cuh")),
    (
        "groups.cuh",
        include_str!("../../../kernels/common/groups.cuh"),
    ),
    (
        "hadamard.cuh",
        include_str!("../../../kernels/common/hadamard.cuh"),
    ),
    (
        "qcodes.cuh",
        include_str!("../../../kernels/common/qcodes.cuh"),
    ),
    ("mask.cuh", include_str!("../../../kernels/common/mask.cuh")),
    (
        "softmax.cuh",
        include_str!("../../../kernels/common/softmax.cuh"),
    ),
    (
        "epilogue.cuh",
        include_str!("../../../kernels/common/epilogue.cuh"),
    ),
    (
        "hopper.cuh",
        include_str!("../../../kernels/common/hopper.cuh"),
    ),
];

/// The kernel modules: one file per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Quant,
    AttnMma,
    AttnExact,
    /// The sm_90a wgmma/TMA kernel of `int8-fp8` (no entry points on other architectures).
    AttnWgmma,
}

impl Module {
    pub const ALL: [Module; 4] = [
        Module::Quant,
        Module::AttnMma,
        Module::AttnExact,
        Module::AttnWgmma,
    ];

    pub fn file(self) -> &'static str {
        match self {
            Module::Quant => "quant.cu",
            Module::AttnMma => "attn_mma.cu",
            Module::AttnExact => "attn_exact.cu",
            Module::AttnWgmma => "attn_wgmma.cu",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Module::Quant => include_str!("../../../kernels/quant.cu"),
            Module::AttnMma => include_str!("../../../kernels/attn_mma.cu"),
            Module::AttnExact => include_str!("../../../kernels/attn_exact.cu"),
            Module::AttnWgmma => include_str!("../../../kernels/attn_wgmma.cu"),
        }
    }

    /// One self-contained translation unit: NVRTC gets no include paths. The sources are the ones
    /// built into the binary, or, when `SAGE_KERNEL_DIR` names a copy of `kernels/`, read from
    /// there at run time (kernel work on a GPU machine without a Rust toolchain; the cache key is
    /// the text, so an edited file is recompiled).
    pub fn amalgamated(self) -> Result<String> {
        let dir = std::env::var_os("SAGE_KERNEL_DIR").map(PathBuf::from);
        let read = |rel: String, built_in: &str| -> Result<String> {
            match &dir {
                None => Ok(built_in.to_string()),
                Some(d) => std::fs::read_to_string(d.join(&rel)).map_err(|e| Error::Compile {
                    kernel: rel.clone(),
                    log: format!("SAGE_KERNEL_DIR={}: {e}", d.display()),
                }),
            }
        };
        let mut text = String::from("#define SAGE_AMALGAMATED 1\n");
        for (name, body) in HEADERS {
            let body = read(format!("common/{name}"), body)?;
            text.push_str(&format!("// ---- common/{name}\n{body}\n"));
        }
        let body = read(self.file().to_string(), self.source())?;
        text.push_str(&format!("// ---- {}\n{body}", self.file()));
        Ok(text)
    }
}

/// Whether the quantization and Hopper kernels about to be compiled wait for the previous grid
/// (`grid_dependency_sync`, prelude.cuh), which programmatic dependent launches require: always for
/// the built-in sources; for a `SAGE_KERNEL_DIR` copy, only if its text has the wait (an older copy
/// launched that way would race with the kernel before it).
pub fn sources_wait_for_grid_dependency() -> bool {
    // the built-in sources do (a unit test counts one wait per entry): nothing to read at start-up
    if std::env::var_os("SAGE_KERNEL_DIR").is_none() {
        return true;
    }
    [Module::Quant, Module::AttnWgmma].iter().all(|m| {
        m.amalgamated().is_ok_and(|t| {
            t.contains("griddepcontrol.wait") && t.contains("grid_dependency_sync();")
        })
    })
}

/// Architectures `sage kernels` and the backend compile for: the device's compute capability.
pub fn arch_for(major: i32, minor: i32) -> String {
    match (major, minor) {
        (9, 0) => "sm_90a".to_string(),
        (m, n) => format!("sm_{m}{n}"),
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: NAME,
        reason,
    }
}

/// Where pip puts NVRTC (`pip install nvidia-cuda-nvrtc==13.0.*`), for machines without a toolkit.
fn pip_nvrtc_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("SAGE_NVRTC_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let site = String::from_utf8_lossy(&out.stdout).trim().to_string();
        dirs.push(PathBuf::from(&site).join("nvidia/cu13/lib"));
        dirs.push(PathBuf::from(&site).join("nvidia/cuda_nvrtc/lib"));
    }
    dirs
}

/// Whether libnvrtc can be opened. A build that links it (feature `dynamic-linking`) could not have
/// started without it.
fn nvrtc_present() -> bool {
    #[cfg(feature = "dynamic-loading")]
    {
        // SAFETY: only probes whether the shared library can be opened.
        unsafe { cudarc::nvrtc::sys::is_culib_present() }
    }
    #[cfg(not(feature = "dynamic-loading"))]
    {
        true
    }
}

/// Makes NVRTC loadable, or says why it is not: the system's, else pip's, loaded once so that
/// cudarc's own lookup by name finds it. Never panics (cudarc would, without the library).
pub fn ensure_nvrtc() -> Result<()> {
    static READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            if nvrtc_present() {
                return Ok(());
            }
            for dir in pip_nvrtc_dirs() {
                let lib = dir.join("libnvrtc.so.13");
                if !lib.is_file() {
                    continue;
                }
                // NVRTC opens its builtins library by name at compile time: load it first, globally.
                for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
                    // SAFETY: loading these libraries runs only their own initialisers; they stay
                    // loaded (global) for the life of the process so later lookups by name find them.
                    let opened = unsafe {
                        libloading::os::unix::Library::open(
                            Some(dir.join(name)),
                            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                        )
                    };
                    if let Ok(l) = opened {
                        std::mem::forget(l);
                    }
                }
                if nvrtc_present() {
                    return Ok(());
                }
            }
            Err("NVRTC (libnvrtc.so.13) not found: install the CUDA 13.0 toolkit or `pip install nvidia-cuda-nvrtc==13.0.88`, or set SAGE_NVRTC_DIR".to_string())
        })
        .clone()
        .map_err(unavailable)
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded (ensure_nvrtc); the out-pointers are valid.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(unavailable(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

/// The options every kernel is built with (kernels/ABI.md: IEEE division, no flush to zero).
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ]
}

/// Compiles `module` (every dtype's entry points) for `arch` to a CUBIN with NVRTC, without the
/// cache, with ptxas's resource report: the CUBIN and what ptxas said about each entry point
/// ([`PtxasReport`]).
pub fn compile_with_report(module: Module, arch: &str) -> Result<(Vec<u8>, PtxasReport)> {
    compile_logged(module, arch, &["-Xptxas", "-v"])
        .map(|(cubin, log)| (cubin, PtxasReport::parse(&log)))
}

/// What ptxas reported for one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryReport {
    pub name: String,
    pub registers: u32,
    /// Bytes of spill stores (local memory the register allocator needed).
    pub spill_bytes: u32,
    /// ptxas's "Potential Performance Loss" notes about this entry (on Hopper: wgmma serialized).
    pub performance_warnings: Vec<String>,
}

/// ptxas's `-v` report of one compilation, one entry per kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    pub entries: Vec<EntryReport>,
    /// Non-inlined device functions that spill, as (name, bytes of spill stores): their spills
    /// happen inside whichever entry calls them.
    pub callee_spills: Vec<(String, u32)>,
    /// Performance notes that name no entry of this compilation (or no function at all).
    pub other_warnings: Vec<String>,
    /// The front end's warnings (`file(line): warning #N-D: ...`), which the sources must not draw.
    pub compiler_warnings: Vec<String>,
}

impl PtxasReport {
    /// Reads the `ptxas info` lines of an NVRTC log: "Compiling entry function 'NAME'" opens an
    /// entry, then its spill and register lines; performance notes name their function. The front
    /// end's warnings are kept as they are.
    pub fn parse(log: &str) -> Self {
        let mut entries: Vec<EntryReport> = Vec::new();
        let quoted = |line: &str| line.split('\'').nth(1).map(str::to_string);
        let number_before = |line: &str, what: &str| -> Option<u32> {
            let at = line.find(what)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        let mut notes = Vec::new();
        let mut callee_spills = Vec::new();
        // the function whose "Function properties" (stack and spills) follow: an entry, or a
        // non-inlined device function, whose figures are not the entry's
        let mut props_of = String::new();
        let mut compiler_warnings = Vec::new();
        for line in log.lines() {
            if line.contains(": warning #") {
                compiler_warnings.push(line.trim().to_string());
            } else if line.contains("Compiling entry function") {
                if let Some(name) = quoted(line) {
                    entries.push(EntryReport {
                        name,
                        ..EntryReport::default()
                    });
                }
            } else if line.contains("Potential Performance Loss") {
                // "... in the function 'NAME'"
                let name = line.rsplit('\'').nth(1).unwrap_or_default();
                notes.push((name.to_string(), line.trim().to_string()));
            } else if let Some(at) = line.find("Function properties for ") {
                props_of = line[at + "Function properties for ".len()..]
                    .trim()
                    .to_string();
            } else if let Some(n) = number_before(line, "bytes spill stores") {
                match entries.last_mut() {
                    Some(e) if props_of == e.name => e.spill_bytes = n,
                    _ if n > 0 => callee_spills.push((props_of.clone(), n)),
                    _ => {}
                }
            } else if let Some(e) = entries.last_mut()
                && let Some(n) = number_before(line, "registers")
            {
                e.registers = n;
            }
        }
        let mut other_warnings = Vec::new();
        for (name, note) in notes {
            match entries.iter_mut().find(|e| e.name == name) {
                Some(e) => e.performance_warnings.push(note),
                None => other_warnings.push(note),
            }
        }
        PtxasReport {
            entries,
            callee_spills,
            other_warnings,
            compiler_warnings,
        }
    }
}

fn compile_logged(module: Module, arch: &str, extra: &[&str]) -> Result<(Vec<u8>, String)> {
    use cudarc::nvrtc::sys;
    ensure_nvrtc()?;
    let kernel = module.file().to_string();
    let compile_err = |log: String| Error::Compile {
        kernel: format!("{kernel} ({arch})"),
        log,
    };
    let src = CString::new(module.amalgamated()?).map_err(|e| compile_err(e.to_string()))?;
    let name = CString::new(kernel.clone()).map_err(|e| compile_err(e.to_string()))?;
    let opts: Vec<CString> = options(arch)
        .into_iter()
        .chain(extra.iter().map(|o| o.to_string()))
        .map(CString::new)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| compile_err(e.to_string()))?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer handed to NVRTC outlives the calls; the program is destroyed below.
    unsafe {
        let r = sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(compile_err(format!("nvrtcCreateProgram: {r:?}")));
        }
        let compiled = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        let mut log_size = 0usize;
        let mut log = String::new();
        if sys::nvrtcGetProgramLogSize(prog, &mut log_size) == sys::nvrtcResult::NVRTC_SUCCESS
            && log_size > 1
        {
            let mut buf = vec![0 as c_char; log_size];
            if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) == sys::nvrtcResult::NVRTC_SUCCESS {
                log = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            }
        }
        let result = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(compile_err(format!("{compiled:?}\n{log}")))
        } else {
            let mut size = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut size);
            if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                Err(compile_err(format!(
                    "no CUBIN ({r:?}); is {arch} a real architecture?"
                )))
            } else {
                let mut cubin = vec![0u8; size];
                let r = sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char);
                if r == sys::nvrtcResult::NVRTC_SUCCESS {
                    Ok((cubin, log))
                } else {
                    Err(compile_err(format!("nvrtcGetCUBIN: {r:?}")))
                }
            }
        };
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// The cache folder: `SAGE_CUDA_CACHE_DIR`, else `$XDG_CACHE_HOME/sage/cuda`, else `~/.cache/sage/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SAGE_CUDA_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("sage/cuda"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".cache/sage/cuda"))
}

/// The input dtype whose entry points `name` belongs to, for the modules whose entries all carry
/// one (the attention kernels: `..._f16`, `..._bf16`, `..._f32`, as a whole `_`-separated part of the
/// name); `None` for quant.cu, which also has dtype-free entries.
pub fn entry_dtype(module: Module, name: &str) -> Option<EntryDtype> {
    if module == Module::Quant {
        return None;
    }
    name.split('_').find_map(EntryDtype::parse)
}

/// One input dtype's entry points of a module (`-DSAGE_ONLY_<T>`, prelude.cuh): a third of the
/// module's NVRTC time (attn_wgmma.cu's 65 entries take ~90 s on sm_90a), so a process compiles
/// only the types it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryDtype {
    F16,
    Bf16,
    F32,
}

impl EntryDtype {
    pub const ALL: [EntryDtype; 3] = [EntryDtype::F16, EntryDtype::Bf16, EntryDtype::F32];

    /// `f16`, `bf16` or `f32`, as entry names spell them.
    pub fn parse(s: &str) -> Option<EntryDtype> {
        EntryDtype::ALL.into_iter().find(|d| d.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryDtype::F16 => "f16",
            EntryDtype::Bf16 => "bf16",
            EntryDtype::F32 => "f32",
        }
    }

    fn define(self) -> &'static str {
        match self {
            EntryDtype::F16 => "-DSAGE_ONLY_F16",
            EntryDtype::Bf16 => "-DSAGE_ONLY_BF16",
            EntryDtype::F32 => "-DSAGE_ONLY_F32",
        }
    }
}

/// The builds of `module` that a process running inputs of `dtypes` loads: quant.cu whole, an
/// attention module once per dtype (the keys `cubin` is called with).
pub fn builds(module: Module, dtypes: &[EntryDtype]) -> Vec<Option<EntryDtype>> {
    if module == Module::Quant {
        vec![None]
    } else {
        dtypes.iter().copied().map(Some).collect()
    }
}

/// Where the disk cache keeps the build of `module` for `arch` (only `only`'s entry points when
/// given): named by a hash of the kernel text, the options and the NVRTC version. `None` without a
/// cache folder.
pub fn cache_file(module: Module, arch: &str, only: Option<EntryDtype>) -> Result<Option<PathBuf>> {
    let (major, minor) = nvrtc_version()?;
    let mut hash = Sha256::new();
    hash.update(module.amalgamated()?.as_bytes());
    hash.update(options(arch).join(" ").as_bytes());
    hash.update(only.map_or("", EntryDtype::define).as_bytes());
    hash.update(format!("nvrtc {major}.{minor}").as_bytes());
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(cache_dir().map(|d| d.join(format!("{}-{arch}-{}.cubin", module.file(), &digest[..16]))))
}

/// The CUBIN of `module` for `arch` (only `only`'s entry points when given), from the disk cache
/// when an identical build is there.
pub fn cubin(module: Module, arch: &str, only: Option<EntryDtype>) -> Result<Vec<u8>> {
    let extra: Vec<&str> = only.map(EntryDtype::define).into_iter().collect();
    let file = cache_file(module, arch, only)?;
    if let Some(f) = &file
        && let Ok(bytes) = std::fs::read(f)
    {
        return Ok(bytes);
    }
    let cubin = compile_logged(module, arch, &extra)?.0;
    if let Some(f) = &file {
        // A cache that cannot be written only costs the next process a compile.
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_entries_name_their_dtype() {
        let at = |m, n| entry_dtype(m, n);
        assert_eq!(
            at(
                Module::AttnWgmma,
                "attn_int8_fp8_wgmma_kv128_hd128_f16_trio_persist"
            ),
            Some(EntryDtype::F16)
        );
        assert_eq!(
            at(Module::AttnWgmma, "attn_int8_fp8_wgmma_kv64_hd64_bf16"),
            Some(EntryDtype::Bf16)
        );
        assert_eq!(
            at(Module::AttnMma, "attn_int8_fp16_hd64_f32"),
            Some(EntryDtype::F32)
        );
        assert_eq!(
            at(Module::AttnExact, "attn_exact_hd128_bf16"),
            Some(EntryDtype::Bf16)
        );
        // "fp16" is the P V type, not the input's
        assert_eq!(at(Module::AttnMma, "attn_int8_fp16_hd64"), None);
        // quant.cu compiles whole: kv_stats_finish and its kin have no dtype
        assert_eq!(at(Module::Quant, "quantize_q_rows_f16"), None);
        // every attention entry is under one SAGE_WANT_<T>, so one dtype's build has all of its own
        for m in [Module::AttnMma, Module::AttnExact, Module::AttnWgmma] {
            let text = m.source();
            for t in ["F16", "BF16", "F32"] {
                assert!(
                    text.contains(&format!("#ifdef SAGE_WANT_{t}")),
                    "{}",
                    m.file()
                );
            }
        }
    }

    #[test]
    fn warm_cache_builds_are_the_keys_runs_load() {
        for d in EntryDtype::ALL {
            assert_eq!(EntryDtype::parse(d.name()), Some(d));
            assert_eq!(
                d.define(),
                format!("-DSAGE_ONLY_{}", d.name().to_uppercase())
            );
        }
        assert_eq!(EntryDtype::parse("fp16"), None);
        assert_eq!(EntryDtype::parse("F16"), None);
        let two = [EntryDtype::F16, EntryDtype::F32];
        // quant.cu is one build whatever the dtypes; an attention module one per dtype, the key that
        // a run of that dtype computes from its entry names
        assert_eq!(builds(Module::Quant, &two), vec![None]);
        assert_eq!(
            builds(Module::AttnWgmma, &two),
            vec![Some(EntryDtype::F16), Some(EntryDtype::F32)]
        );
        for (name, d) in [
            ("attn_int8_fp8_wgmma_kv128_hd64_f32_solo", EntryDtype::F32),
            ("attn_exact_hd64_f16", EntryDtype::F16),
        ] {
            let module = if name.starts_with("attn_exact") {
                Module::AttnExact
            } else {
                Module::AttnWgmma
            };
            assert!(builds(module, &two).contains(&entry_dtype(module, name)));
            assert_eq!(entry_dtype(module, name), Some(d));
        }
        assert_eq!(builds(Module::AttnMma, &[]), vec![]);
    }

    #[test]
    fn built_in_sources_wait_for_the_previous_grid() {
        // every entry of the two modules launched as programmatic dependents starts with the wait
        if std::env::var_os("SAGE_KERNEL_DIR").is_some() {
            return;
        }
        for m in [Module::Quant, Module::AttnWgmma] {
            let text = m.source();
            assert!(text.contains("grid_dependency_sync();"), "{}", m.file());
            let entries = text.matches("__global__").count();
            let waits = text.matches("grid_dependency_sync();").count();
            assert!(
                entries > 0 && waits == entries,
                "{}: {entries} entries, {waits} waits",
                m.file()
            );
        }
    }

    #[test]
    fn ptxas_report_names_spills_and_serialized_wgmma_per_entry() {
        let log = "\
ptxas info    : (C7520) Potential Performance Loss: wgmma.mma_async instructions are serialized due to program dependence on compiler-inserted WG.AR in divergent path in the function 'k_solo'
ptxas info    : Function properties for helper
ptxas         .     16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Compiling entry function 'k_solo' for 'sm_90a'
ptxas info    : Function properties for k_solo
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 255 registers, used 4 barriers
ptxas info    : Compiling entry function 'k_pair' for 'sm_90a'
ptxas info    : Function properties for k_pair
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers, 8 bytes cumulative stack size
";
        let r = PtxasReport::parse(log);
        assert_eq!(r.entries.len(), 2);
        let (solo, pair) = (&r.entries[0], &r.entries[1]);
        assert_eq!(
            (solo.name.as_str(), solo.registers, solo.spill_bytes),
            ("k_solo", 255, 0)
        );
        assert_eq!(solo.performance_warnings.len(), 1);
        assert!(solo.performance_warnings[0].contains("C7520"));
        assert_eq!(
            (pair.name.as_str(), pair.registers, pair.spill_bytes),
            ("k_pair", 168, 4)
        );
        assert!(pair.performance_warnings.is_empty());
        assert_eq!(r.callee_spills, vec![("helper".to_string(), 12)]);
        assert!(r.other_warnings.is_empty());
        let stray = PtxasReport::parse(
            "ptxas info    : (C7514) Potential Performance Loss: wgmma serialized in the function 'gone'\n",
        );
        assert_eq!(stray.other_warnings.len(), 1);
        assert!(stray.compiler_warnings.is_empty());
        assert_eq!(PtxasReport::parse(""), PtxasReport::default());
        // a front-end warning (two block-scope `extern __shared__` arrays of one name, session 14)
        let front = PtxasReport::parse(
            "attn_wgmma.cu(291): warning #1556-D: name linkage conflicts with previous declaration of \
             variable \"smem_raw\" (declared at line 784)\n\
             Remark: The warnings can be suppressed with \"-diag-suppress <warning-number>\"\n",
        );
        assert_eq!(front.compiler_warnings.len(), 1);
        assert!(front.compiler_warnings[0].starts_with("attn_wgmma.cu(291): warning #1556-D"));
        assert!(front.entries.is_empty() && front.other_warnings.is_empty());
    }
}
