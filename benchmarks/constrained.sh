#!/usr/bin/env bash
# What constrained decoding costs: one server with the demo model (`llama`, `small`), the same
# requests sent plain, with a `json_schema`, and with the list schema a `tool_choice:
# required` call decodes under (two tools), at 1 and 32 streams, in ROUNDS rounds after a
# warm-up. Output tokens/s of each relative to plain are printed per round.
#
#   benchmarks/constrained.sh            # 2 rounds
#   ROUNDS=4 benchmarks/constrained.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/constrained"
mkdir -p "$work"
cd "$root"
cargo build --release --bin rosetta --bin rosetta-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release"

# shellcheck source=benchmarks/common.sh
source "$root/benchmarks/common.sh"

cat > "$work/config.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - { id: demo, demo: { arch: llama, size: small, seed: 0 }, licence: llama3.1, engine: { max_num_seqs: 64 } }
tenants: [{ id: anonymous, accepted_licences: [llama3.1] }]
YAML
cat > "$work/schema.json" <<JSON
{"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "score": {"type": "number"}}, "required": ["name", "tags", "score"]}
JSON
# The grammar of tool_choice: required with these two tools (assistant/tools.rs).
cat > "$work/tools.json" <<JSON
{"type": "array", "minItems": 1, "items": {"anyOf": [
  {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}, "required": ["name", "arguments"], "additionalProperties": false},
  {"type": "object", "properties": {"name": {"const": "convert"}, "arguments": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}}, "required": ["amount", "to"]}}, "required": ["name", "arguments"], "additionalProperties": false}]}}
JSON
start server "$work/config.yaml"
url=$started_url
# Warm up (prefix cache, allocator) so that the first target is not the cold one.
"$bin/rosetta-bench" --target "warm=$url=demo" --concurrency 32 --requests-per-stream 1 --max-tokens 16 > /dev/null
for round in $(seq "${ROUNDS:-2}"); do
    echo "round $round"
    "$bin/rosetta-bench" --target "plain=$url=demo" --target "schema=$url=demo=$work/schema.json" \
        --target "tools=$url=demo=$work/tools.json" --concurrency 1,32 --requests-per-stream 2 \
        --max-tokens 128 | grep '^|'
done
