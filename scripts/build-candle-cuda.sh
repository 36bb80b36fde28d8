#!/usr/bin/env bash
# Builds sage-candle's `cuda` feature: `sage_attention` on candle's CUDA tensors (sage-cuda on
# candle's own stream) and its test, crates/sage-candle/tests/cuda.rs. candle's cuda feature compiles
# its own kernels with nvcc and links the CUDA libraries (cudarc's `dynamic-linking`), so this build
# is separate from the workspace's (which opens them at run time and starts on machines without).
#
# With nvcc 13.0 on PATH it is used as is. Without (a CI-like machine, no GPU), a CUDA 13.0 compiler
# is assembled from pip wheels (nvcc, crt, nvvm, cccl, runtime headers: ~0.4 GB under $TOOLS) and
# the link uses stub libraries carrying the right names (libcuda, libcublas, libcublasLt, libcurand;
# libnvrtc from the nvidia-cuda-nvrtc wheel); the GPU machine's real libraries answer at run time, so
# give them these unversioned names there: scripts/run-candle-cuda.sh BINARY does.
#
#   scripts/build-candle-cuda.sh [OUT_DIR]     (CUDA_COMPUTE_CAP, default 90, picks candle's PTX target)
# Prints the path of the test binary; copies it to OUT_DIR when given.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOOLS:-$HOME/.cache/sage/cuda-tools}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target/candle-cuda}

if ! command -v nvcc >/dev/null 2>&1; then
  root=$tools/cuda
  if [ ! -x "$root/bin/nvcc" ]; then
    mkdir -p "$tools/wheels" "$tools/unpack"
    python3 -m pip download -q --no-deps -d "$tools/wheels" \
      "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
      "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.88"
    rm -rf "$tools/unpack"/* "$root"
    for w in "$tools"/wheels/*.whl; do (cd "$tools/unpack" && python3 -m zipfile -e "$w" .); done
    cu=$tools/unpack/nvidia/cu13
    inc=$root/targets/x86_64-linux/include
    mkdir -p "$inc" "$root/targets/x86_64-linux/lib/stubs"
    cp -r "$cu/bin" "$root/bin"
    cp -r "$cu/nvvm" "$root/nvvm"
    cp -r "$cu/include/." "$inc/"
    cp -a "$cu/lib/." "$root/targets/x86_64-linux/lib/"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/*
    ln -s targets/x86_64-linux/include "$root/include"
    ln -s targets/x86_64-linux/lib "$root/lib64"
    # stubs: every function cudarc declares, under the unversioned soname
    src=$(cargo metadata --format-version 1 --manifest-path "$here/Cargo.toml" |
      python3 -c "import json,sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name']=='cudarc').rsplit('/',1)[0])")
    for pair in cuda:driver cublas:cublas cublasLt:cublaslt curand:curand; do
      lib=${pair%%:*}; mod=${pair##*:}
      grep -ohE '^pub unsafe fn [A-Za-z0-9_]+\(' "$src/src/$mod/sys/mod.rs" | sed -E 's/pub unsafe fn //; s/\(//' |
        sort -u | awk '{print "void "$1"(void){}"}' > "$tools/$lib.c"
      cc -shared -fPIC -o "$root/targets/x86_64-linux/lib/stubs/lib$lib.so" -Wl,-soname,"lib$lib.so" "$tools/$lib.c"
    done
    # the real libnvrtc and libcudart from the wheels (candle-kernels links libcudart for its MoE kernels)
    ln -sf ../libnvrtc.so.13 "$root/targets/x86_64-linux/lib/stubs/libnvrtc.so"
    ln -sf ../libcudart.so.13 "$root/targets/x86_64-linux/lib/stubs/libcudart.so"
  fi
  export CUDA_ROOT=$root PATH=$root/bin:$PATH
fi

cd "$here"
cargo test --release -p sage-candle --no-default-features --features cuda --no-run 2>&1 | tee /tmp/candle-cuda-build.log
bin=$(grep -oE 'target/candle-cuda/release/deps/cuda-[0-9a-f]+' /tmp/candle-cuda-build.log | tail -n 1)
[ -n "$bin" ] || bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/cuda-* | grep -v '\.d$' | head -n 1)
echo "$bin"
if [ $# -ge 1 ]; then mkdir -p "$1" && cp "$bin" "$1/candle-cuda-tests"; fi
