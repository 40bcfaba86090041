#!/usr/bin/env bash
# Runs on this workplace's GPU machine (CUDA 13 libraries, no Rust) from the binaries that
# scripts/cuda-device-bundle.sh left in .device/: the test comparing the CUDA path's logits
# with the CPU path's, then the serving benchmark with the engine on the GPU and, side by side,
# on the machine's CPUs. Logs go to $OUT (or /tmp/rosetta-device-out) to come back.
#
#   device run, carry [".device"]:  bash scripts/device-cuda-check.sh
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/rosetta-device-out}"
mkdir -p "$out"

# cuBLAS 13 and the CUDA runtime come with the image's Python packages; find their folder.
lib="$(dirname "$(find /opt /usr /root /home /tmp -name 'libcublas.so.13' -path '*nvidia*' \
    2>/dev/null | head -n 1)")"
[[ -n "$lib" && "$lib" != . ]] || { echo "libcublas.so.13 not found" >&2; exit 1; }
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=/tmp/rosetta-device-bin
mkdir -p "$bin"
for f in .device/*.gz; do gunzip -c "$f" > "$bin/$(basename "$f" .gz)"; done
chmod +x "$bin"/*
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$out/gpu.txt"
ldd "$bin/cuda-test" | grep -E 'cu|not found' | tee -a "$out/gpu.txt"

status=0
timeout 240 "$bin/cuda-test" --ignored --test-threads=1 --nocapture 2>&1 | tee "$out/cuda-test.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || status=1

export ROSETTA_BIN_DIR="$bin" STREAMS="${STREAMS:-1,8,32,64}"
for run in "cuda auto" "cpu f32"; do
    set -- $run
    DEVICE=$1 DTYPE=$2 timeout 240 benchmarks/serving.sh > "$out/serving-$1.md" 2> "$out/serving-$1.err" \
        || status=1
    cp benchmarks/.work/rosetta.err "$out/rosetta-$1.log" 2> /dev/null
done
cat "$out/serving-cuda.md" "$out/serving-cpu.md"
exit "$status"
