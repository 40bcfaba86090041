#!/usr/bin/env bash
# The serving benchmark of the batching issue: Rosetta (and llama.cpp's server, when built with
# benchmarks/llama_cpp/build.sh, and mistral.rs, when benchmarks/mistralrs is built as its
# README says) on the `small` demo model (SmolLM2-135M's shape, f32), chat
# prompts of about 32 tokens, exactly 128 output tokens (EOS ignored), greedy, at 1, 8 and 32
# concurrent streams, measured in one run; then time to first token for a prompt sharing a
# 1,024-token prefix with an earlier one (prefix-cache hit against miss).
#
#   benchmarks/serving.sh            # Rosetta, plus llama.cpp and mistral.rs where built
#   STREAMS=1,8 benchmarks/serving.sh
#   KV_BLOCK_SIZE=8 benchmarks/serving.sh   # Rosetta's KV block size (default 16)
#   MAX_TOKENS=512 STREAMS=32 benchmarks/serving.sh   # longer outputs (default 128)
#   MISTRALRS=1 benchmarks/serving.sh   # also the same weights on `backend: mistralrs` (a
#                                       # rosetta built with --features mistralrs), same server
#   MIXTRAL=1 benchmarks/serving.sh     # also the `mixtral`/`small` demo (benchmarks/mixtral.sh
#                                       # adds its expert-compute share)
#   FORMATS=bf16,int8 benchmarks/serving.sh   # also the same weights held as bf16 and int8
#                                             # (rows rosetta-bf16, rosetta-int8), same server;
#                                             # any `dtype`: w8a8, w16a16, w4a8 too
#   KV_BF16=f32 benchmarks/serving.sh    # also these formats with `kv_cache_dtype: bf16`
#                                         # (rows rosetta-f32-kvbf16), same server; `auto`
#                                         # already gives every format but f32 a bf16 cache
#   KV_FP8=w8a8 benchmarks/serving.sh    # also these formats with `kv_cache_dtype: fp8`
#                                         # (rows rosetta-w8a8-kvfp8), same server
#   LLAMA_FORMATS=f32,q8_0,q4_k_m benchmarks/serving.sh  # llama.cpp in each GGUF format
#                                             # (quantized from the f32 GGUF by llama-quantize)
#   ROSETTA_MAX_CPU_ISA=avx2 LLAMA_ISA=avx2 benchmarks/serving.sh   # both capped at AVX2, as on
#                                             # an AVX2-only host (build llama.cpp with ISA=avx2)
#   LONG_PROMPT=4096 benchmarks/serving.sh   # then the time to first token of one prompt of
#                                             # this many tokens, alone, on each target (llama.cpp
#                                             # restarted with one slot that holds it), and the ms
#                                             # per token of the decode after it; 0 skips it
#   DEVICE=cuda DTYPE=f32 ROSETTA_BIN_DIR=/path/to/bin benchmarks/serving.sh
#       # Rosetta's engine on a GPU, with binaries built elsewhere (scripts/cuda-device-bundle.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work"
mkdir -p "$work"
cd "$root"
streams="${STREAMS:-1,8,32}"
max_tokens="${MAX_TOKENS:-128}"
if [[ -n "${ROSETTA_BIN_DIR:-}" ]]; then
    bin="$(cd "$ROSETTA_BIN_DIR" && pwd)"
else
    cargo build --release --bin rosetta --bin rosetta-bench ${MISTRALRS:+--features rosetta-gateway/mistralrs}
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
fi
model="$work/models/llama-small"
[[ -f "$model/config.json" ]] || "$bin/rosetta" model generate "$model" --arch llama --size small --seed 0
mixtral="$work/models/mixtral-small"
if [[ -n "${MIXTRAL:-}" && ! -f "$mixtral/config.json" ]]; then
    "$bin/rosetta" model generate "$mixtral" --arch mixtral --size small --seed 0
fi

# GET answers 2xx; curl where it exists, else Python (GPU images may lack curl).
probe() {
    if command -v curl > /dev/null; then
        curl -sf "$1" > /dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2> /dev/null
    fi
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The KV caches are committed at load (CPU), as llama.cpp's is: no level pays the first
# touch of cache pages the level before it did not reach.
prefault=true
[[ "${DEVICE:-cpu}" != cpu ]] && prefault=false
cat > "$work/rosetta.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - id: small
    path: $model
    licence: apache-2.0
    max_context: 8192
    dtype: ${DTYPE:-auto}
    engine: { max_num_seqs: 64, max_num_batched_tokens: ${BUDGET:-256}, kv_block_size: ${KV_BLOCK_SIZE:-16}, device: ${DEVICE:-cpu}, kv_cache_prefault: $prefault }
YAML
if [[ -n "${MISTRALRS:-}" ]]; then
    cat >> "$work/rosetta.yaml" <<YAML
  - { id: small-mistralrs, path: $model, licence: apache-2.0, max_context: 8192, backend: mistralrs, engine: { max_num_seqs: 32 } }
YAML
fi
if [[ -n "${MIXTRAL:-}" ]]; then
    cat >> "$work/rosetta.yaml" <<YAML
  - { id: mixtral, path: $mixtral, licence: apache-2.0, max_context: 8192, engine: { max_num_seqs: 64, max_num_batched_tokens: ${BUDGET:-256}, kv_cache_prefault: true } }
YAML
fi
formats="${FORMATS:-}"
for fmt in ${formats//,/ }; do
    cat >> "$work/rosetta.yaml" <<YAML
  - { id: small-$fmt, path: $model, licence: apache-2.0, max_context: 8192, dtype: $fmt, engine: { max_num_seqs: 64, max_num_batched_tokens: ${BUDGET:-256}, kv_block_size: ${KV_BLOCK_SIZE:-16}, kv_cache_prefault: true } }
YAML
done
# "format cache" pairs: the formats of KV_BF16 with a bf16 cache, those of KV_FP8 with fp8.
kv_rows=()
kv_bf16="${KV_BF16:-}" kv_fp8="${KV_FP8:-}"
for fmt in ${kv_bf16//,/ }; do kv_rows+=("$fmt bf16"); done
for fmt in ${kv_fp8//,/ }; do kv_rows+=("$fmt fp8"); done
for row in "${kv_rows[@]}"; do
    read -r fmt kv <<< "$row"
    cat >> "$work/rosetta.yaml" <<YAML
  - { id: small-$fmt-kv$kv, path: $model, licence: apache-2.0, max_context: 8192, dtype: $fmt, engine: { max_num_seqs: 64, max_num_batched_tokens: ${BUDGET:-256}, kv_block_size: ${KV_BLOCK_SIZE:-16}, kv_cache_dtype: $kv, kv_cache_prefault: true } }
YAML
done
"$bin/rosetta" serve --config "$work/rosetta.yaml" > "$work/rosetta.out" 2> "$work/rosetta.err" &
pids+=($!)
rosetta_url=""
for _ in $(seq 600); do
    rosetta_url=$(sed -n 's/^listening on //p' "$work/rosetta.out")
    [[ -n "$rosetta_url" ]] && probe "$rosetta_url/ready" && break
    kill -0 "${pids[0]}" 2> /dev/null || break
    sleep 0.1
done
probe "$rosetta_url/ready" || { tail -n 5 "$work/rosetta.err" >&2; echo "rosetta did not start; see $work/rosetta.err" >&2; exit 1; }
targets=(--target "rosetta=$rosetta_url=small")
[[ -n "${MISTRALRS:-}" ]] && targets+=(--target "rosetta-mistralrs=$rosetta_url=small-mistralrs")
[[ -n "${MIXTRAL:-}" ]] && targets+=(--target "rosetta-mixtral=$rosetta_url=mixtral")
for fmt in ${formats//,/ }; do
    targets+=(--target "rosetta-$fmt=$rosetta_url=small-$fmt")
done
for row in "${kv_rows[@]}"; do
    read -r fmt kv <<< "$row"
    targets+=(--target "rosetta-$fmt-kv$kv=$rosetta_url=small-$fmt-kv$kv")
done

# LLAMA_ISA=avx2 takes the build of `ISA=avx2 benchmarks/llama_cpp/build.sh`.
llama_server=$(ls "$work"/build-llama-server-*-"${LLAMA_ISA:-avx512}"/bin/llama-server 2>/dev/null | head -n 1 || true)
llama_pids=()
llama_targets=()
# Starts llama-server on the GGUF of format $1 with $2 slots sharing a context of $3 tokens.
llama_target() {
    local port=$((20000 + RANDOM % 20000)) name="llama.cpp"
    "$llama_server" -m "$work/gguf/llama-small-$1.gguf" --alias small --host 127.0.0.1 --port "$port" -np "$2" -c "$3" -t 2 --cont-batching \
        > "$work/llama-$1.out" 2>&1 &
    pids+=($!)
    llama_pids+=($!)
    for _ in $(seq 600); do probe "http://127.0.0.1:$port/health" && break; sleep 0.1; done
    [[ "$1" != f32 ]] && name="llama.cpp-$1"
    llama_targets+=(--target "$name=http://127.0.0.1:$port=small")
}
if [[ -n "$llama_server" && -x "$llama_server" ]]; then
    # As many slots as the most streams asked for (at least 32).
    slots=$(echo "32,$streams" | tr ',' '\n' | sort -n | tail -n 1)
    mkdir -p "$work/gguf"
    f32_gguf="$work/gguf/llama-small-f32.gguf"
    [[ -f "$f32_gguf" ]] || "$work/venv/bin/python" benchmarks/llama_cpp/hf_to_gguf.py "$model" "$f32_gguf"
    for fmt in $(echo "${LLAMA_FORMATS:-f32}" | tr ',' ' '); do
        gguf="$work/gguf/llama-small-$fmt.gguf"
        if [[ ! -f "$gguf" ]]; then
            "$(dirname "$llama_server")/llama-quantize" "$f32_gguf" "$gguf" "$(echo "$fmt" | tr '[:lower:]' '[:upper:]')" \
                > "$work/quantize-$fmt.log" 2>&1
        fi
        llama_target "$fmt" "$slots" $((slots * (max_tokens + 128)))
    done
else
    echo "llama.cpp's server is not built; run benchmarks/llama_cpp/build.sh to compare" >&2
fi

"$bin/rosetta-bench" "${targets[@]}" "${llama_targets[@]}" --concurrency "$streams" --requests-per-stream 2 --max-tokens "$max_tokens" --prefix-test 1024 \
    | tee "$work/serving-table.md"

# mistral.rs has no server of ours to call: its bench binary runs the same load in-process,
# one level at a time (0.8.1 can crash at some levels; that is reported, not fatal).
mistralrs_bench="$work/mistralrs-target/release/mistralrs-bench"
if [[ -x "$mistralrs_bench" && -z "${ROSETTA_BIN_DIR:-}" ]]; then
    echo
    echo "| streams | mistral.rs tok/s | Rosetta tok/s | Rosetta / mistral.rs |"
    echo "|---|---|---|---|"
    for c in ${streams//,/ }; do
        theirs=$(HF_HUB_OFFLINE=1 "$mistralrs_bench" "$model" --concurrency "$c" --max-tokens "$max_tokens" \
            --requests-per-stream 2 2> "$work/mistralrs-$c.err" | awk -F'|' -v c="$c" '$2 + 0 == c { print $3 + 0 }' || true)
        ours=$(awk -F'|' -v c="$c" '$2 ~ /rosetta/ && $3 + 0 == c { print $4 + 0 }' "$work/serving-table.md")
        if [[ -n "$theirs" ]]; then
            echo "| $c | $theirs | $ours | $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.1fx", a / b }') |"
        else
            echo "| $c | failed: $(grep -m 1 -A 1 'panicked' "$work/mistralrs-$c.err" | tail -n 1 || true) (see mistralrs-$c.err) | $ours | - |"
        fi
    done
fi

long="${LONG_PROMPT:-4096}"
if [[ "$long" != 0 ]]; then
    echo
    if ((${#llama_pids[@]})); then
        for p in "${llama_pids[@]}"; do kill "$p" 2> /dev/null || true; wait "$p" 2> /dev/null || true; done
        llama_pids=()
        llama_targets=()
        for fmt in $(echo "${LLAMA_FORMATS:-f32}" | tr ',' ' '); do
            llama_target "$fmt" 1 $((long + 512))
        done
    fi
    "$bin/rosetta-bench" "${targets[@]}" "${llama_targets[@]}" --long-prompt "$long" | tee -a "$work/serving-table.md"
fi
