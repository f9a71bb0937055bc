#!/usr/bin/env bash
# Schema fuzzing of a running govboxd with schemathesis against daemon/openapi.yaml.
#   scripts/schemathesis.sh [EXAMPLES]      (default 50 examples per operation)
# Runs inside `govbox-reliability --exec`, which starts the box and sets GOVBOX_URL, GOVBOX_CA
# and GOVBOX_TOKEN (scripts/reliability.sh does this). Every check schemathesis has (`--checks
# all`: no 5xx, status codes, content types, headers and bodies as documented) must pass.
# schemathesis comes from PyPI into .venv-rel (made here on first use). Report:
# target/schemathesis/ (JUnit XML).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
: "${GOVBOX_URL:?run through govbox-reliability --exec (scripts/reliability.sh), which sets GOVBOX_URL}"
if ! .venv-rel/bin/schemathesis --version >/dev/null 2>&1; then
  python3 -m venv .venv-rel
  .venv-rel/bin/pip install -q "schemathesis>=4,<5"
fi
.venv-rel/bin/schemathesis --version
mkdir -p target/schemathesis
# --checks all includes the negative-data checks; the bearer token authorises every call (the
# spec also allows mTLS). The seed makes a run repeatable.
.venv-rel/bin/schemathesis run daemon/openapi.yaml --url "$GOVBOX_URL" --tls-verify "$GOVBOX_CA" \
  -H "Authorization: Bearer $GOVBOX_TOKEN" --checks all --max-examples "$n" --request-timeout 120 \
  --seed "${SCHEMATHESIS_SEED:-1}" --report junit --report-dir target/schemathesis --no-color
