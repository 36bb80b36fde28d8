#!/usr/bin/env bash
# The whole speed comparison on a GPU machine in one go: sage bench for every backend that runs there,
# and PyTorch's own attention (FlashAttention2 and cuDNN backends) from shared/bench/torch_sdpa.py when
# PyTorch is present, merged into one table and one plot. Every figure comes from the same card.
#
#   scripts/bench-gpu.sh [OUT_DIR] [SHAPES]        (SAGE=path/to/sage to use a prebuilt binary)
set -euo pipefail
out=${1:-bench-out}
shapes=${2:-8x32x1024x128,8x32x4096x128,2x32x16384x128,8x32x4096x64,2x32x16384x64}
sage=${SAGE:-sage}
here=$(cd "$(dirname "$0")/.." && pwd)
torch_script=${TORCH_SDPA:-$here/../shared/bench/torch_sdpa.py}
mkdir -p "$out"
baseline=()
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && [ -f "$torch_script" ]; then
  rm -f "$out/torch.jsonl"
  python3 "$torch_script" --shapes "$shapes" --causal both --backends flash,cudnn --json "$out/torch.jsonl" | tee "$out/torch.txt"
  baseline=(--baseline "$out/torch.jsonl")
else
  echo "PyTorch with CUDA (or $torch_script) not found: sage figures only" >&2
fi
for backend in ${BACKENDS:-cuda wgpu}; do
  if "$sage" info --json | python3 -c "import json,sys; sys.exit(0 if any(b['backend']=='$backend' and b['available'] for b in json.load(sys.stdin)) else 1)"; then
    "$sage" bench --backend "$backend" --shapes "$shapes" --causal-set both \
      --json "$out/sage-$backend.jsonl" --plot "$out/sage-$backend.svg" "${baseline[@]}" | tee "$out/sage-$backend.txt"
  else
    echo "backend $backend unavailable here: skipped" >&2
  fi
done
