#!/usr/bin/env bash
# Runs the test binary of scripts/build-candle-cuda.sh on a GPU machine (CUDA 13.0 driver and toolkit
# libraries): the binary was linked against stub libraries named libcuda.so, libcublas.so,
# libcublasLt.so and libcurand.so, so those names are pointed at this machine's real libraries first.
#
#   scripts/run-candle-cuda.sh path/to/candle-cuda-tests [test args...]
# SAGE_MODEL_DIR names all-MiniLM-L6-v2 for the model test (scripts/fetch-minilm.sh).
set -euo pipefail
bin=$1
shift
libs=${TMPDIR:-/tmp}/sage-cuda-libs
mkdir -p "$libs"
for l in cuda cublas cublasLt curand; do
  real=$(ls /usr/local/cuda/lib64/lib$l.so.* /usr/local/cuda/targets/x86_64-linux/lib/lib$l.so.* 2>/dev/null | head -n 1 || true)
  [ -n "$real" ] || real=$(ldconfig -p | awk -v n="lib$l.so." 'index($1, n) == 1 {print $NF; exit}')
  [ -n "$real" ] || { echo "lib$l.so.* not found on this machine" >&2; exit 1; }
  ln -sf "$real" "$libs/lib$l.so"
done
export LD_LIBRARY_PATH=$libs:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
exec "$bin" --test-threads 1 "$@"
