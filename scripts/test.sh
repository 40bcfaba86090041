#!/usr/bin/env bash
# The project's one test command: sets up the Python SDK clients' virtual environment and
# the JavaScript clients' node_modules, builds the `rosetta` binary, and runs every test in
# the workspace.
#
#   scripts/test.sh                    # everything
#   scripts/test.sh -p rosetta-tests   # extra arguments go to `cargo test`
#   scripts/test.sh -- --nocapture
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

clients="tests/clients"
venv="$clients/.venv"
stamp="$venv/.requirements.txt"
# (Re)create the venv when it is missing, broken, or its requirements changed.
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1 \
    || ! cmp -s "$clients/requirements.txt" "$stamp"; then
    echo "setting up $venv (openai SDK for tests/clients)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$clients/requirements.txt"
    cp "$clients/requirements.txt" "$stamp"
fi

# Debian packages the tests run for real: promtool (package prometheus) lints /metrics
# scrapes (tests/tests/observability.rs); redis-server holds shared rate limits
# (tests/tests/shared_limits.rs).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# node and npm run the openai npm package and the Vercel AI SDK (tests/clients/js).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
source scripts/apt-install.sh
apt_install "${missing[@]}"

# The JavaScript clients, exactly as locked (package-lock.json), from npm.
js="$clients/js"
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.installed-lock.json" 2>/dev/null; then
    echo "installing $js/node_modules (openai, ai, @ai-sdk/openai-compatible, zod)" >&2
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$js/package-lock.json" "$js/node_modules/.installed-lock.json"
fi

# The tested binary can inject engine faults (engine/src/native/fault.rs): a test-only
# feature that release builds, and the README's `cargo run --release`, never have. It also
# has the mistral.rs backend (`backend: mistralrs`), which is tested against the native engine.
features=(--features rosetta-gateway/fault-injection,rosetta-gateway/mistralrs)
cargo build --bin rosetta "${features[@]}"
# The whole workspace unless the arguments pick packages (-p/--package) themselves; the
# workspace is tested with the same features so the binary above is not rebuilt without them.
scope=(--workspace "${features[@]}")
for arg in "$@"; do
    [[ "$arg" == "--" ]] && break
    case "$arg" in -p | -p* | --package | --package=*) scope=() ;; esac
done
cargo test "${scope[@]}" "$@"
