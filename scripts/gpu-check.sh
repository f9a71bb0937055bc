#!/usr/bin/env bash
# The CUDA check, run on a GPU machine (NVIDIA driver, CUDA toolkit libraries, Python with torch
# and transformers; no Rust, no registry) from the repository root, with gpu-carry/ made by
# scripts/gpu-pack.sh beside it:
#   scripts/gpu-check.sh
# 1. the GPU, its driver and the CUDA libraries govbox loads (nvidia-smi, ldconfig);
# 2. the drivers' CUDA tests: probe/open and NVRTC compile (unit), then every Backend op on
#    the device against the CPU backend (tests/backend_parity.rs, its cuda variants);
# 3. the engine's correctness suite on CUDA (the `cuda` variants of test_device!, one thread);
#    tests that need the real downloaded models (.cache/models, not carried) are skipped;
# 4. a decode benchmark through the CLI on a random-weight model of Qwen2.5-0.5B's shapes
#    (bench/make_bench_model.py), tokens/s: BF16 safetensors as written, and Q8_0 when
#    gpu-carry/llama-convert (llama.cpp's converter) is there to write a Q8_0 GGUF of it. The
#    engine has no quantise-at-load option (EngineOptions has only kv_tokens), hence the file.
# Every step runs under `timeout`, from a budget that keeps the whole script within 8 minutes.
# Output goes to stdout and, when $OUT is set, to $OUT/gpu-check.log. Exit status: 0 when every
# step passed, 1 otherwise. GOVBOX_REQUIRE_CUDA=1 makes a test fail, not skip, without a device.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu-check.log") 2>&1
fi

budget=${GPU_CHECK_BUDGET_S:-465}
carry=gpu-carry
bin=$(mktemp -d /tmp/govbox-gpu-bin.XXXXXX)
model_dir=
# Temporary binaries and models go even when the script stops early (timeout, error, Ctrl-C).
trap 'rm -rf "$bin" ${model_dir:+"$model_dir" "$model_dir.log" "$model_dir.q8_0.gguf"}' EXIT
declare -a summary=()
failed=0

# step NAME CAP_SECONDS COMMAND...: runs COMMAND under timeout min(CAP, what is left).
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((budget - SECONDS))
  if ((left < 15)); then
    echo "== $name: SKIPPED (time budget spent)"
    summary+=("SKIP  $name (time)")
    failed=1
    return
  fi
  local t=$((cap < left ? cap : left))
  echo
  echo "== $name (timeout ${t}s, at ${SECONDS}s)"
  local start=$SECONDS
  timeout --kill-after=5 "$t" "$@"
  local rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    summary+=("PASS  $name (${took}s)")
  elif ((rc == 124 || rc == 137)); then
    summary+=("TIME  $name (${took}s, limit ${t}s)")
    failed=1
  else
    summary+=("FAIL  $name (rc $rc, ${took}s)")
    failed=1
  fi
}

echo "== gpu-check at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
if [[ ! -f $carry/MANIFEST ]]; then
  echo "no $carry/MANIFEST: run scripts/gpu-pack.sh on a machine with Rust and carry gpu-carry/ here" >&2
  exit 1
fi
cat "$carry/MANIFEST"
for f in "$carry"/bin/*; do
  name=$(basename "$f" .gz)
  if [[ $f == *.gz ]]; then gzip -dc "$f" >"$bin/$name"; else cp "$f" "$bin/$name"; fi
  chmod +x "$bin/$name"
done

echo
echo "== GPU"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,temperature.gpu,compute_cap --format=csv ||
  echo "nvidia-smi failed"
nvidia-smi 2>/dev/null | head -4 | tail -2

# The CUDA libraries govbox dlopens: libcuda from the driver, libcublas and libnvrtc from the
# toolkit (or the wheels that torch brings) when the loader does not find them already.
extra=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
  [[ -d $d ]] && extra="$extra:$d"
done
pyl=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for pat in ("nvidia/*/lib", "nvidia/cu13/lib"):
        for d in glob.glob(os.path.join(sp, pat)):
            if glob.glob(os.path.join(d, "libcublas.so*")) or glob.glob(os.path.join(d, "libnvrtc.so*")):
                dirs.add(d)
print(":".join(sorted(dirs)))
EOF
)
[[ -n $pyl ]] && extra="$extra:$pyl"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$extra"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
for lib in libcuda.so libcublas.so libnvrtc.so; do
  found=$(ldconfig -p 2>/dev/null | grep -m1 -o "$lib[.0-9]* " || true)
  if [[ -z $found ]]; then
    for d in ${LD_LIBRARY_PATH//:/ }; do
      f=$(ls "$d"/$lib* 2>/dev/null | head -1)
      [[ -n $f ]] && found=$f && break
    done
  fi
  echo "$lib: ${found:-NOT FOUND}"
done

# The test binaries look for tests/fixtures under the checkout they were built in.
built_in=$(sed -n 's/^checkout=//p' "$carry/MANIFEST")
if [[ -n $built_in && $built_in != "$PWD" && ! -e $built_in ]]; then
  mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in" && echo "linked $built_in -> $PWD (fixtures)"
fi

export GOVBOX_REQUIRE_CUDA=1
export GOVBOX_SKIP_REAL_MODELS=1
export RUST_BACKTRACE=1

# The benchmark models are made on the CPU while the GPU tests run.
model_dir=$(mktemp -d /tmp/govbox-bench-model.XXXXXX)
q8=$model_dir.q8_0.gguf
(
  timeout 200 python3 bench/make_bench_model.py "$model_dir" --shape qwen2.5-0.5b --dtype bfloat16 \
    --tokenizer tests/fixtures/tiny-qwen2 && echo "bf16 rc=0"
  if [[ -f $carry/llama-convert/convert_hf_to_gguf.py ]]; then
    PYTHONPATH="$carry/llama-convert/gguf-py:$carry/llama-convert" timeout 150 python3 \
      "$carry/llama-convert/convert_hf_to_gguf.py" "$model_dir" --outtype q8_0 --outfile "$q8" 2>&1 | grep -v Writing: |
      tail -3
    [[ -f $q8 ]] && echo "q8_0 rc=0"
  fi
) >"$model_dir.log" 2>&1 &
maker=$!

step "drivers unit tests (probe, open, NVRTC compile)" 45 "$bin/drivers-govbox_drivers" cuda:: --test-threads 4
step "drivers: every op on CUDA vs the CPU backend" 120 "$bin/drivers-backend_parity" cuda --test-threads 2

for exe in "$bin"/engine-*; do
  [[ -e $exe ]] || continue
  step "engine $(basename "$exe" | sed 's/^engine-//') (cuda variants)" 60 "$exe" ::cuda --test-threads 1
done

echo
echo "== benchmark model (bench/make_bench_model.py, Qwen2.5-0.5B shapes, random BF16 weights)"
left=$((budget - SECONDS - 20))
waited=0
while kill -0 "$maker" 2>/dev/null && ((waited < left)); do
  sleep 2
  waited=$((waited + 2))
done
cat "$model_dir.log"
if grep -q '^bf16 rc=0' "$model_dir.log"; then
  summary+=("PASS  benchmark model written")
  step "decode benchmark, BF16 weights, cuda:0 (govbox model bench -p 128 -n 128 -r 2)" 90 \
    "$bin/govbox" model bench --model "$model_dir" --device cuda:0 --kv-tokens 1024 -p 128 -n 128 -r 2
  if grep -q '^q8_0 rc=0' "$model_dir.log"; then
    step "decode benchmark, Q8_0 weights (GGUF), cuda:0 (govbox model bench -p 128 -n 128 -r 2)" 90 \
      "$bin/govbox" model bench --model "$q8" --device cuda:0 --kv-tokens 1024 -p 128 -n 128 -r 2
  else
    echo "(no Q8_0 run: no Q8_0 GGUF was written; see the log above)"
    summary+=("SKIP  Q8_0 benchmark (no converter or conversion failed)")
  fi
else
  kill "$maker" 2>/dev/null
  summary+=("FAIL  benchmark model not written")
  failed=1
fi
rm -rf "$model_dir" "$model_dir.log" "$q8" "$bin"

echo
echo "== summary (${SECONDS}s)"
printf '%s\n' "${summary[@]}"
nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader 2>/dev/null | sed 's/^/gpu after: /'
exit $failed
