#!/usr/bin/env bash
# Installs what sage's builds and tests need on a fresh Debian machine: the Vulkan software driver
# (lavapipe) that the wgpu backend runs on without a GPU, and NVRTC 13.0 (pinned: the GPU machines'
# driver is CUDA 13.0 and rejects newer PTX) so that every CUDA kernel compiles here too.
set -euo pipefail
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  fi
  # g++ (C++20: Debian 12's g++ 12) for the kernels' host emulator (kernels/emu)
  if ! command -v g++ >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  fi
fi
if ! python3 -c "import nvidia.cu13" >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88 'nvidia-cuda-runtime==13.0.*'
fi
# all-MiniLM-L6-v2 for `sage model minilm`, `sage calibrate --model minilm` and tests/model.rs
"$(dirname "$0")/fetch-minilm.sh"
