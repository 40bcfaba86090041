#!/usr/bin/env bash
# What the gateway's remote path adds: a `rosetta --engine-only` replica serving the tiny demo
# model, and a gateway with that replica as its only remote, both on loopback; small chat
# requests (1 output token) go to each in turn, interleaved, and the latency percentiles of
# both and the difference are printed.
#
#   benchmarks/gateway_overhead.sh          # 500 requests per target
#   REQUESTS=2000 benchmarks/gateway_overhead.sh
#   BASELINE_BIN=/path/to/old/rosetta benchmarks/gateway_overhead.sh
#
# With BASELINE_BIN, a second engine and gateway from that binary run beside the first pair
# and every request goes to all four in turn: the same run compares two builds (for example
# before and after a change on the request path, such as metrics).
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
# $ROSETTA is the binary (this build's unless set).
start() {
    local name=$1 config=$2; shift 2
    "${ROSETTA:-$bin/rosetta}" serve --config "$config" "$@" > "$work/$name.out" 2> "$work/$name.err" &
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
# A gateway in front of the engine at $1, written to $2.
gateway_config() {
    cat > "$2" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - { id: tiny, licence: apache-2.0, remote: [{ url: "$1" }] }
YAML
}
gateway_config "$engine" "$work/gateway.yaml"
gateway=$(start gateway "$work/gateway.yaml")
targets=(--target "direct=$engine=tiny" --target "gateway=$gateway=tiny")
if [[ -n "${BASELINE_BIN:-}" ]]; then
    base_engine=$(ROSETTA="$BASELINE_BIN" start base-engine "$work/engine.yaml" --engine-only)
    gateway_config "$base_engine" "$work/base-gateway.yaml"
    base_gateway=$(ROSETTA="$BASELINE_BIN" start base-gateway "$work/base-gateway.yaml")
    targets+=(--target "baseline-direct=$base_engine=tiny" --target "baseline-gateway=$base_gateway=tiny")
fi
"$bin/rosetta-bench" --overhead "${REQUESTS:-500}" "${targets[@]}"
