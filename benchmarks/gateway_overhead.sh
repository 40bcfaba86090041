#!/usr/bin/env bash
# What the gateway's remote path adds: a `rosetta --engine-only` replica serving the tiny demo
# model, and a gateway with that replica as its only remote, both on loopback; small chat
# requests (1 output token) go to each in turn, interleaved, and the latency percentiles of
# both and the difference are printed.
#
#   benchmarks/gateway_overhead.sh          # 500 requests per target
#   REQUESTS=2000 benchmarks/gateway_overhead.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/overhead"
mkdir -p "$work"
cd "$root"
cargo build --release --bin rosetta --bin rosetta-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts `rosetta serve` with config $1 (and extra args), waits until ready, prints its URL.
start() {
    local name=$1 config=$2; shift 2
    "$bin/rosetta" serve --config "$config" "$@" > "$work/$name.out" 2> "$work/$name.err" &
    pids+=($!)
    local url=""
    for _ in $(seq 600); do
        url=$(sed -n 's/^listening on //p' "$work/$name.out")
        [[ -n "$url" ]] && curl -sf "$url/ready" > /dev/null && { echo "$url"; return; }
        sleep 0.1
    done
    echo "$name did not become ready; see $work/$name.err" >&2
    exit 1
}

cat > "$work/engine.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
cache_dir: $work/cache
auth: { allow_unauthenticated: true }
models:
  - { id: tiny, demo: { arch: llama, size: tiny, seed: 0 }, licence: apache-2.0 }
YAML
engine=$(start engine "$work/engine.yaml" --engine-only)
cat > "$work/gateway.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - { id: tiny, licence: apache-2.0, remote: [{ url: "$engine" }] }
YAML
gateway=$(start gateway "$work/gateway.yaml")
"$bin/rosetta-bench" --overhead "${REQUESTS:-500}" \
    --target "direct=$engine=tiny" --target "gateway=$gateway=tiny"
