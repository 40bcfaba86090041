#!/usr/bin/env bash
# What sharing rate limits through Redis costs per request: two gateways serving the same
# tiny demo model, one keeping its tenant's limits locally and one in a local redis-server
# (Debian's `redis-server`); small chat requests (1 output token) go to each in turn,
# interleaved, and the latency percentiles of both and the difference are printed. The
# limits are set high enough never to refuse.
#
#   benchmarks/limiter_overhead.sh            # 2000 requests per target
#   REQUESTS=5000 benchmarks/limiter_overhead.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/limiter"
mkdir -p "$work"
cd "$root"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --bin rosetta --bin rosetta-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release"

# shellcheck source=benchmarks/common.sh
source "$root/benchmarks/common.sh"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
pids+=($!)

config() {
    cat <<YAML
server: { listen: 127.0.0.1:0 }
cache_dir: $work/cache
auth: { allow_unauthenticated: true, anonymous_tenant: bench }
tenants:
  - { id: bench, limits: { requests_per_minute: 100000000, tokens_per_minute: 100000000000 } }
models:
  - { id: tiny, demo: { arch: llama, size: tiny, seed: 0 }, licence: apache-2.0 }
$1
YAML
}
config "" > "$work/local.yaml"
config "ratelimit: { backend: redis, redis: { url: \"redis://127.0.0.1:$port\", key_prefix: bench } }" > "$work/redis.yaml"
start local "$work/local.yaml"; local_url=$started_url
start redis "$work/redis.yaml"; redis_url=$started_url
"$bin/rosetta-bench" --overhead "${REQUESTS:-2000}" \
    --target "local-limits=$local_url=tiny" --target "redis-limits=$redis_url=tiny"
grep -q "unavailable" "$work/redis.err" && { echo "the Redis limiter fell back to local limits during the run" >&2; exit 1; }
exit 0
