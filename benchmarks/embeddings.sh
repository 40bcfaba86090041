#!/usr/bin/env bash
# /v1/embeddings on the demo `xlm-roberta`/`small` encoder (multilingual-e5-small's shape: 12
# layers of 384, ~33M parameters with the demo vocabulary), f32, one server with the same
# weights twice: `e5` batches queued inputs into passes of up to 8192 tokens, `e5-serial`
# runs one input per pass (`max_num_batched_tokens: 64`, below one input's length). Closed
# loop at 1 / 8 / 32 concurrent clients, one unique input of WORDS words per request (40 by
# default: about 100 tokens); prints inputs/s, latency p50/p99 and the batching gain side by
# side.
#
#   benchmarks/embeddings.sh [REQUESTS_PER_CLIENT]
#   WORDS=6 benchmarks/embeddings.sh       # short inputs (about 15 tokens)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/benchmarks/.work/embeddings"
mkdir -p "$work"
cd "$root"
cargo build --release --bin rosetta
bin="${CARGO_TARGET_DIR:-$root/target}/release"
models="$root/benchmarks/.work/models"
[[ -f "$models/e5-small/config.json" ]] || "$bin/rosetta" model generate "$models/e5-small" --arch xlm-roberta --size small --seed 0
python="$root/tests/clients/.venv/bin/python"
[[ -x "$python" ]] || { echo "run scripts/test.sh first (it makes tests/clients/.venv)" >&2; exit 1; }

# shellcheck source=benchmarks/common.sh
source "$root/benchmarks/common.sh"
cat > "$work/rosetta.yaml" <<YAML
server: { listen: 127.0.0.1:0 }
auth: { allow_unauthenticated: true }
models:
  - { id: e5, path: $models/e5-small, licence: mit, engine: { max_num_batched_tokens: 8192, max_num_seqs: 256 } }
  - { id: e5-serial, path: $models/e5-small, licence: mit, engine: { max_num_batched_tokens: 64, max_num_seqs: 64 } }
YAML
start server "$work/rosetta.yaml"
"$python" - "$started_url" "${1:-16}" "${WORDS:-40}" <<'PY'
import concurrent.futures as cf, json, sys, time, urllib.request

url, per_client, words = sys.argv[1] + "/v1/embeddings", int(sys.argv[2]), int(sys.argv[3])
WORDS = ("habari asubuhi soko matunda mboga rafiki shule kitabu maji mvua jua mlima mto "
         "river mountain garden market morning bridge harbor lantern orchard valley").split()

def text(i):
    x, out = i * 2654435761 % 2**32 + 1, []
    for _ in range(words):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(WORDS[x % len(WORDS)])
    return f"{i}: " + " ".join(out)

def one(model, i):
    body = json.dumps({"model": model, "input": text(i)}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        tokens = json.load(r)["usage"]["prompt_tokens"]
    return time.perf_counter() - t, tokens

def level(model, clients, base):
    n = clients * per_client
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        res = list(pool.map(lambda i: one(model, base + i), range(n)))
    wall = time.perf_counter() - t
    lat = sorted(r[0] for r in res)
    return n / wall, sum(r[1] for r in res) / wall, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]

one("e5", 0); one("e5-serial", 0)  # warm up
print(f"{'clients':>7} | {'batched in/s':>12} {'tok/s':>8} {'p50 ms':>7} {'p99 ms':>7} | {'serial in/s':>11} {'p50 ms':>7} | {'gain':>5}")
base = 1
for clients in (1, 8, 32):
    b = level("e5", clients, base); base += 100000
    s = level("e5-serial", clients, base); base += 100000
    print(f"{clients:>7} | {b[0]:>12.1f} {b[1]:>8.0f} {b[2]*1e3:>7.1f} {b[3]*1e3:>7.1f} | {s[0]:>11.1f} {s[2]*1e3:>7.1f} | {b[0]/s[0]:>4.2f}x")
PY
