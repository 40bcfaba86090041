#!/usr/bin/env bash
# The native engine's Mixtral beside a dense model of similar active size: the demo
# `mixtral`/`small` (8 experts, 2 per token, 12 × 768, ~390M parameters, ~110M active per
# token) and `llama`/`small` (SmolLM2-135M's shape), one server, f32, the serving benchmark's
# engine settings, 64 tokens at 1 / 8 / 32 streams.
#
#   benchmarks/mixtral.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/mixtral"
mkdir -p "$work"
cd "$root"
cargo build --release --bin rosetta --bin rosetta-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release"
models="$root/benchmarks/.work/models"
for spec in "mixtral-small mixtral" "llama-small llama"; do
    set -- $spec
    [[ -f "$models/$1/config.json" ]] || "$bin/rosetta" model generate "$models/$1" --arch "$2" --size small --seed 0
done

# shellcheck source=benchmarks/common.sh
source "$root/benchmarks/common.sh"
cat > "$work/rosetta.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - { id: mixtral, path: $models/mixtral-small, licence: apache-2.0, max_context: 8192, engine: { max_num_seqs: 64, max_num_batched_tokens: 512 } }
  - { id: llama, path: $models/llama-small, licence: apache-2.0, max_context: 8192, engine: { max_num_seqs: 64, max_num_batched_tokens: 512 } }
YAML
start server "$work/rosetta.yaml"
"$bin/rosetta-bench" --target "llama-small=$started_url=llama" --target "mixtral-small=$started_url=mixtral" \
    --concurrency 1,8,32 --requests-per-stream 2 --max-tokens 64

# The share of Mixtral's forward time spent in its mixture-of-experts blocks (routing,
# gathering, the experts' products), per level: /load's counters around one more run each.
seconds() { curl -sf "$started_url/load" | python3 -c "import json,sys; m=json.load(sys.stdin)['models']['mixtral']; print(m['forward_seconds'], m['experts_seconds'])"; }
echo
echo "| streams | Mixtral forward s | in experts s | expert share |"
echo "|---|---|---|---|"
for c in 1 8 32; do
    read -r f0 e0 < <(seconds)
    "$bin/rosetta-bench" --target "mixtral-small=$started_url=mixtral" --concurrency "$c" \
        --requests-per-stream 1 --max-tokens 64 > /dev/null 2>&1
    read -r f1 e1 < <(seconds)
    awk -v c="$c" -v f0="$f0" -v f1="$f1" -v e0="$e0" -v e1="$e1" \
        'BEGIN { f = f1 - f0; e = e1 - e0; printf "| %d | %.2f | %.2f | %.0f%% |\n", c, f, e, 100 * e / f }'
done
