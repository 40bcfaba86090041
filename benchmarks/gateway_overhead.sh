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

# shellcheck source=benchmarks/common.sh
source "$root/benchmarks/common.sh"

cat > "$work/engine.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
cache_dir: $work/cache
auth: { allow_unauthenticated: true }
models:
  - { id: tiny, demo: { arch: llama, size: tiny, seed: 0 }, licence: apache-2.0 }
YAML
start engine "$work/engine.yaml" --engine-only; engine=$started_url
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
start gateway "$work/gateway.yaml"; gateway=$started_url
targets=(--target "direct=$engine=tiny" --target "gateway=$gateway=tiny")
if [[ -n "${BASELINE_BIN:-}" ]]; then
    ROSETTA="$BASELINE_BIN" start base-engine "$work/engine.yaml" --engine-only; base_engine=$started_url
    gateway_config "$base_engine" "$work/base-gateway.yaml"
    ROSETTA="$BASELINE_BIN" start base-gateway "$work/base-gateway.yaml"; base_gateway=$started_url
    targets+=(--target "baseline-direct=$base_engine=tiny" --target "baseline-gateway=$base_gateway=tiny")
fi
"$bin/rosetta-bench" --overhead "${REQUESTS:-500}" "${targets[@]}"
