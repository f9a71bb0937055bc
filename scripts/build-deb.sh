#!/usr/bin/env bash
# Builds the Debian package target/debian/govbox_<version>-1_<arch>.deb (or -o FILE) with cargo-deb:
#   scripts/build-deb.sh                 # release build (what ships)
#   PROFILE=dev scripts/build-deb.sh     # reuse the debug build (the tests; stripped all the same)
#   scripts/build-deb.sh -o /tmp/x.deb   # extra arguments go to `cargo deb`
#   NO_BUILD=1 PROFILE=dev scripts/build-deb.sh   # package binaries built already (tests/tests/debian_package.rs)
#   FEATURES= scripts/build-deb.sh       # without TLCP (the default builds Tongsuo for the [tlcp] listener)
# The package's contents are declared in cli/Cargo.toml, [package.metadata.deb]. cargo-deb builds
# only the crate it packages, so this builds both binaries first, writes their --help texts (the
# package's usr/share/doc/govbox/*.help.txt), then runs `cargo deb --no-build`.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
if ! cargo deb --version >/dev/null 2>&1; then
  echo "cargo-deb is not installed: cargo install cargo-deb --locked" >&2
  exit 1
fi
dir=${CARGO_TARGET_DIR:-}
[ -n "$dir" ] || dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out=$dir/$([ "$profile" = dev ] && echo debug || echo "$profile")
# The TLCP listener and `govbox tls tlcp-*` (Tongsuo, built from its vendored source) ship in the package.
features=${FEATURES-govbox-daemon/tlcp,govbox-cli/tlcp}
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --profile "$profile" -p govbox-cli -p govbox-daemon -p govbox-audit --bins --quiet ${features:+--features "$features"}
fi
"$out/govbox" --help >"$out/govbox.help.txt"
"$out/govboxd" --help >"$out/govboxd.help.txt"
cargo deb -p govbox-cli --no-build --profile "$profile" "$@"
