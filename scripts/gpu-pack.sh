#!/usr/bin/env bash
# Builds, here (a machine with Rust and no GPU), what scripts/gpu-check.sh runs on a GPU machine
# that has no Rust: the test binaries and the CLI, built with the `cuda` feature, stripped, in
# gpu-carry/ (gitignored).
#   scripts/gpu-pack.sh
# Then carry gpu-carry/ to the GPU machine's copy of the repository and run scripts/gpu-check.sh
# there. The fixtures (tests/fixtures) and bench/make_bench_model.py are tracked files, so they
# travel with the work tree; only the binaries go in gpu-carry/.
#
# The test binaries find tests/fixtures through the absolute path of this checkout, compiled in
# (CARGO_MANIFEST_DIR); gpu-pack.sh records it in gpu-carry/MANIFEST and gpu-check.sh links it
# to the GPU machine's copy when the two differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-carry
limit_mib=60

rm -rf "$out"
mkdir -p "$out/bin"

# The test executables of one `cargo test --no-run`, as cargo reports them.
test_exes() {
  cargo test "$@" --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["target"]["name"], m["executable"])
'
}

echo "== drivers tests (--features cuda)"
cargo test -p govbox-drivers --features cuda --no-run
test_exes -p govbox-drivers --features cuda | while read -r name exe; do
  case "$name" in
    govbox_drivers | backend_parity) cp "$exe" "$out/bin/drivers-$name" ;;
  esac
done

echo "== engine tests (--features cuda): the files that run on every backend (test_device!)"
cargo test -p govbox-engine --features cuda --no-run
device_tests=$(grep -l 'test_device!' engine/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')
test_exes -p govbox-engine --features cuda | while read -r name exe; do
  if grep -qx "$name" <<<"$device_tests"; then
    cp "$exe" "$out/bin/engine-$name"
  fi
done

echo "== govbox CLI (release, --features cuda)"
cargo build --release -p govbox-cli --features cuda --bin govbox
cp target/release/govbox "$out/bin/govbox"

# llama.cpp's HF -> GGUF converter (pure Python; fetched by bench/get-llama-cpp.sh into the
# gitignored bench/work), so that gpu-check.sh can also benchmark Q8_0 weights. Optional.
lc=bench/work/llama/llama.cpp
if [[ -f $lc/convert_hf_to_gguf.py && -d $lc/gguf-py ]]; then
  mkdir -p "$out/llama-convert"
  cp -r "$lc/convert_hf_to_gguf.py" "$lc/gguf-py" "$out/llama-convert/"
  [[ -d $lc/conversion ]] && cp -r "$lc/conversion" "$out/llama-convert/"
  find "$out/llama-convert" -name __pycache__ -prune -exec rm -rf {} +
  echo "llama.cpp converter: $(git -C "$lc" rev-parse --short HEAD 2>/dev/null || echo unknown)"
else
  echo "no $lc/convert_hf_to_gguf.py (bench/get-llama-cpp.sh fetches it): gpu-check.sh will skip Q8_0"
fi

strip --strip-debug "$out"/bin/* 2>/dev/null || objcopy --strip-debug "$out"/bin/*
ls -l "$out/bin"
# Stripped, they still come to about 66 MiB: gzip (which every machine has) brings them to a
# third; gpu-check.sh unpacks them.
gzip -9 "$out"/bin/*
{
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git rev-parse HEAD)"
  echo "checkout=$PWD"
  echo "binaries=$(cd "$out/bin" && ls | tr '\n' ' ')"
} >"$out/MANIFEST"
cat "$out/MANIFEST"
ls -l "$out/bin"

total_kib=$(du -sk "$out" | cut -f1)
echo "gpu-carry: $((total_kib / 1024)) MiB (${total_kib} KiB) in all; limit ${limit_mib} MiB"
if ((total_kib > limit_mib * 1024)); then
  echo "gpu-carry is over ${limit_mib} MiB: the device run carries at most 64 MiB" >&2
  exit 1
fi
