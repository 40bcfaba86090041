#!/usr/bin/env bash
# The soak test of the hardening issue (not part of the test command): MINUTES (default 15)
# of mixed traffic against a real `rosetta serve` on 127.0.0.1 — whole answers, streams,
# streams dropped midway, streams never read (paused, then aborted after a 5 s stall
# timeout), multi-prompt completions with several choices, oversized bodies — printing the
# server's RSS, KV blocks in use and p50/p99 latency each minute. Fails if RSS after the
# first minute grows 5% or more, if any request gets a status other than 200/400/429/503 or
# a broken connection, or if KV blocks are still in use once the traffic has stopped.
#
#   benchmarks/soak.sh                 # 15 minutes, release build
#   MINUTES=2 benchmarks/soak.sh       # a quick run
#   PROFILE=debug benchmarks/soak.sh   # a debug build (no release build needed; it replaces
#                                      # target/debug/rosetta, which scripts/test.sh rebuilds)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/soak"
mkdir -p "$work"
cd "$root"
profile="${PROFILE:-release}"
if [[ "$profile" == release ]]; then
    cargo build --release --bin rosetta
else
    cargo build --bin rosetta
fi
bin="${CARGO_TARGET_DIR:-$root/target}/$profile/rosetta"
cat > "$work/config.yaml" <<YAML
server: { listen: 127.0.0.1:0, stream_stall_timeout: 5 }
cache_dir: "$work/cache"
auth: { allow_unauthenticated: true }
pool: { max_queue: 32 }
models:
  - id: tiny
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
    max_context: 512
    engine: { kv_cache_bytes: 33554432, max_num_seqs: 64 }
YAML
"$bin" serve --config "$work/config.yaml" > "$work/stdout.log" 2> "$work/server.log" &
pid=$!
trap 'kill "$pid" 2> /dev/null || true' EXIT
port=""
for _ in $(seq 1 600); do
    port="$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/stdout.log")"
    [[ -n "$port" ]] && python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/ready', timeout=2)" 2> /dev/null && break
    kill -0 "$pid" 2> /dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.5
done
echo "rosetta (pid $pid, $profile build) on port $port; ${MINUTES:-15} minutes of traffic"
python3 benchmarks/soak.py --port "$port" --pid "$pid" --minutes "${MINUTES:-15}" --stall 5
