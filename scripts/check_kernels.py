#!/usr/bin/env python3
"""Compiles every kernels/*.cu with NVRTC 13.0 (through ctypes, no GPU needed) for each target
architecture, the way the Rust side does: no CUDA headers, no -I paths, the kernels/common/*.cuh
headers handed to nvrtcCreateProgram by name. Then checks, per (file, arch):

  - NVRTC compiles it and nvrtcGetCUBIN returns a CUBIN (the launcher loads CUBINs: PTX from a
    newer NVRTC than the driver is rejected, GPU-NOTES.md);
  - the module holds exactly the entry points kernels/ABI.md lists for that architecture;
  - ptxas reports no local-memory spills and no stack frame (-Xptxas -v).

It also compiles each file once as the amalgamation the launcher may use instead of named headers
(ABI.md, "Compiling"): `#define SAGE_AMALGAMATED`, the headers in HEADER_ORDER, then the file; and
once with -DSAGE_ONLY_BF16 (the dtype filter), checking that only the bf16 entry points remain.

Prints one line per (file, arch), exits non-zero on any failure.

With --emulate it also builds kernels/emu/test.cpp with g++ and runs it: the kernel sources on the
host emulator against a C++ port of the CPU reference (kernels/emu/README.md).

  python3 scripts/check_kernels.py [--arch sm_90a ...] [--file quant.cu ...] [--verbose] [--emulate]
"""

import argparse
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")
ARCHS = ["sm_80", "sm_89", "sm_90a"]

# The order in which an amalgamated source concatenates the headers (each depends only on earlier ones).
HEADER_ORDER = [
    "prelude.cuh",
    "ptx.cuh",
    "dtype.cuh",
    "fp8.cuh",
    "int4.cuh",
    "groups.cuh",
    "hadamard.cuh",
    "qcodes.cuh",
    "mask.cuh",
    "softmax.cuh",
    "epilogue.cuh",
    "hopper.cuh",
]

DTYPES = ["f16", "bf16", "f32"]
HEAD_DIMS = [64, 128]


def arch_number(arch):
    return int(re.match(r"sm_(\d+)", arch).group(1))


def expected_entries(cu_file, arch, dtypes=DTYPES):
    """The entry points ABI.md promises in `cu_file` compiled for `arch` (with -DSAGE_ONLY_<dt>
    for each of `dtypes` when that is not all of them)."""
    fp8 = arch_number(arch) >= 89
    if cu_file == "quant.cu":
        names = []
        for dt in dtypes:
            names += [
                f"kv_stats_blocks_{dt}",
                f"quantize_q_{dt}",
                f"quantize_k_{dt}",
                f"quantize_v_e4m3_{dt}",
                f"quantize_v_f16_{dt}",
            ]
            if dt != "f32":
                names += [f"quantize_q_rows_{dt}", f"quantize_k_rows_{dt}", f"quantize_v_cols_{dt}"]
        return set(names) | {"kv_stats_finish"}
    if cu_file == "attn_mma.cu":
        variants = ["int8_fp16"] + (["int8_fp8", "int4_fp8"] if fp8 else [])
        return {f"attn_{v}_hd{d}_{dt}" for v in variants for d in HEAD_DIMS for dt in dtypes}
    if cu_file == "attn_wgmma.cu":
        if arch != "sm_90a":
            return set()
        return {
            f"attn_int8_fp8_wgmma_kv{kv}_hd{d}_{dt}{p}"
            for kv in (64, 128)
            for d in HEAD_DIMS
            for dt in dtypes
            for p in ("", "_solo", "_persist", "_trio", "_trio_persist")
        } | {f"attn_int8_fp8_wgmma_kv128_hd128_{dt}_trio_persist_q" for dt in dtypes if dt != "f32"} | {
            f"attn_wgmma_smem_probe_{dt}" for dt in dtypes
        }
    if cu_file == "attn_exact.cu":
        return {f"attn_exact_hd{d}_{dt}" for d in HEAD_DIMS for dt in dtypes}
    return None  # unknown file: no entry-point check


def find_nvrtc():
    env = os.environ.get("SAGE_NVRTC")
    if env:
        return env
    pats = [
        "/root/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13",
        os.path.join(sys.prefix, "lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13"),
        "/usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so.13",
        "/usr/local/cuda/lib64/libnvrtc.so.13",
    ]
    for pat in pats:
        hits = sorted(glob.glob(pat))
        if hits:
            return hits[0]
    raise SystemExit("libnvrtc.so.13 not found (set SAGE_NVRTC to its path)")


class Nvrtc:
    def __init__(self, path):
        # libnvrtc dlopens its builtins by soname; load them first so that works without LD_LIBRARY_PATH.
        d = os.path.dirname(path)
        for b in sorted(glob.glob(os.path.join(d, "libnvrtc-builtins.so.*"))):
            if "alt" not in b:
                ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(path)
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = (major.value, minor.value)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def err(self, code):
        return self.lib.nvrtcGetErrorString(code).decode()

    def compile(self, name, source, headers, options):
        """Returns (ok, log, ptx, cubin)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        n = len(headers)
        hsrc = (ctypes.c_char_p * max(n, 1))(*[h[1].encode() for h in headers])
        hnames = (ctypes.c_char_p * max(n, 1))(*[h[0].encode() for h in headers])
        rc = lib.nvrtcCreateProgram(
            ctypes.byref(prog), source.encode(), name.encode(), n, hsrc if n else None, hnames if n else None
        )
        if rc != 0:
            return False, f"nvrtcCreateProgram: {self.err(rc)}", "", b""
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            if rc != 0:
                return False, f"{self.err(rc)}\n{log}", "", b""
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, ptx)
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            cubin = ctypes.create_string_buffer(size.value)
            rc = lib.nvrtcGetCUBIN(prog, cubin)
            if rc != 0 or size.value == 0:
                return False, f"nvrtcGetCUBIN: {self.err(rc)}\n{log}", "", b""
            return True, log, ptx.value.decode(errors="replace"), cubin.raw
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def read_headers():
    hdrs = []
    for p in sorted(glob.glob(os.path.join(KERNELS, "common", "*.cuh"))):
        with open(p) as f:
            hdrs.append(("common/" + os.path.basename(p), f.read()))
    return hdrs


def amalgamate(headers, source):
    by_name = dict(headers)
    parts = ["#define SAGE_AMALGAMATED 1\n"]
    for h in HEADER_ORDER:
        parts.append(f"// ---- common/{h} ----\n" + by_name["common/" + h] + "\n")
    parts.append(source)
    return "".join(parts)


PTXAS_FN = re.compile(r"Compiling entry function '(\w+)'")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log):
    """{function: {"regs", "stack", "spill_st", "spill_ld", "smem"}} from an -Xptxas -v log."""
    out, cur = {}, None
    for line in log.splitlines():
        m = PTXAS_FN.search(line)
        if m:
            cur = out.setdefault(m.group(1), {"regs": 0, "stack": 0, "spill_st": 0, "spill_ld": 0, "smem": 0})
            continue
        if cur is None:
            continue
        m = PTXAS_SPILL.search(line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = PTXAS_REGS.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            m2 = PTXAS_SMEM.search(line)
            if m2:
                cur["smem"] = int(m2.group(1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="architectures (default: %s)" % ", ".join(ARCHS))
    ap.add_argument("--file", action="append", help="kernels/*.cu file names (default: all)")
    ap.add_argument("--verbose", action="store_true", help="print every entry point's registers/smem")
    ap.add_argument("--no-amalgamation", action="store_true", help="skip the amalgamated-source check")
    ap.add_argument("--emulate", action="store_true", help="also run the host emulator (needs g++ 12+)")
    args = ap.parse_args()

    nvrtc = Nvrtc(find_nvrtc())
    print(f"NVRTC {nvrtc.version[0]}.{nvrtc.version[1]}")
    headers = read_headers()
    files = args.file or sorted(os.path.basename(p) for p in glob.glob(os.path.join(KERNELS, "*.cu")))
    archs = args.arch or ARCHS
    failures = 0
    for cu in files:
        with open(os.path.join(KERNELS, cu)) as f:
            source = f.read()
        for arch in archs:
            t = time.time()
            opts = [f"--gpu-architecture={arch}", "--std=c++17", "-Xptxas", "-v"]
            ok, log, ptx, cubin = nvrtc.compile(cu, source, headers, opts)
            dt = time.time() - t
            if not ok:
                failures += 1
                print(f"{cu:16s} {arch:7s} FAIL ({dt:.1f}s)\n{log}")
                continue
            problems = []
            entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
            want = expected_entries(cu, arch)
            if want is not None:
                if want - entries:
                    problems.append("missing entries: " + ", ".join(sorted(want - entries)))
                if entries - want:
                    problems.append("unexpected entries: " + ", ".join(sorted(entries - want)))
            stats = parse_ptxas(log)
            for fn, s in sorted(stats.items()):
                if s["spill_st"] or s["spill_ld"] or s["stack"]:
                    problems.append(
                        f"{fn}: {s['stack']} B stack, {s['spill_st']} B spill stores, {s['spill_ld']} B spill loads"
                    )
            max_regs = max((s["regs"] for s in stats.values()), default=0)
            max_smem = max((s["smem"] for s in stats.values()), default=0)
            status = "ok" if not problems else "FAIL"
            failures += bool(problems)
            print(
                f"{cu:16s} {arch:7s} {status}  cubin {len(cubin):8d} B  {len(entries):2d} entries  "
                f"max {max_regs} regs  max {max_smem} B smem  ({dt:.1f}s)"
            )
            for p in problems:
                print("    " + p)
            if args.verbose:
                for fn, s in sorted(stats.items()):
                    print(f"    {fn:32s} {s['regs']:3d} regs {s['smem']:6d} B smem")
        if not args.no_amalgamation:
            arch = archs[-1]
            ok, log, _, _ = nvrtc.compile(cu, amalgamate(headers, source), [], [f"--gpu-architecture={arch}", "--std=c++17"])
            failures += not ok
            print(f"{cu:16s} {arch:7s} {'ok' if ok else 'FAIL'}  amalgamated (no named headers)")
            if not ok:
                print(log)
            ok, log, ptx, _ = nvrtc.compile(
                cu, source, headers, [f"--gpu-architecture={arch}", "--std=c++17", "-DSAGE_ONLY_BF16"]
            )
            entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx)) if ok else set()
            want = expected_entries(cu, arch, ["bf16"])
            good = ok and (want is None or entries == want)
            failures += not good
            print(f"{cu:16s} {arch:7s} {'ok' if good else 'FAIL'}  -DSAGE_ONLY_BF16: {len(entries)} entries")
            if not ok:
                print(log)
            elif not good:
                print("    got " + ", ".join(sorted(entries)))
    if args.emulate:
        failures += not run_emulator()
    if failures:
        print(f"{failures} failure(s)")
        return 1
    print("all ok")
    return 0


def run_emulator():
    """Builds and runs kernels/emu/test.cpp (unit tests + one case per mode/feature)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        print("emulator         FAIL  no g++ found")
        return False
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "sage_emu")
        cmd = [cxx, "-std=c++20", "-O2", "-ffp-contract=off", "-pthread", "-w", "-I" + KERNELS,
               os.path.join(KERNELS, "emu", "test.cpp"), "-o", exe]
        build = subprocess.run(cmd, capture_output=True, text=True)
        if build.returncode != 0:
            print("emulator         FAIL  build\n" + build.stderr[-4000:])
            return False
        run = subprocess.run([exe], capture_output=True, text=True)
        lines = [l for l in run.stdout.splitlines() if l.startswith("==") or "FAIL" in l or "rel_l1" in l]
        for l in lines:
            print("    " + l.strip())
        ok = run.returncode == 0
        print(f"emulator         {'ok' if ok else 'FAIL'}  {run.stdout.strip().splitlines()[-1] if run.stdout else run.stderr[-2000:]}")
        return ok


if __name__ == "__main__":
    sys.exit(main())
