#!/usr/bin/env bash
# Builds the CUDA path for this workplace's GPU machine and leaves the binaries in .device/
# (git-ignored) for the device tool to carry; scripts/device-cuda-check.sh runs them there.
#
# That machine's image has CUDA 13's libraries (as PyPI's nvidia-* wheels, beside PyTorch) and
# no Rust toolchain, and candle links cuBLAS dynamically, so the binaries are built here
# against the same CUDA 13 wheels (nvcc included), installed with pip into a cache folder:
# no system CUDA toolkit is needed. Takes about 6 minutes cold for the test binary on two
# cores, plus the server.
#
#   scripts/cuda-device-bundle.sh               # Hopper (compute capability 9.0)
#   CUDA_COMPUTE_CAP=80 scripts/cuda-device-bundle.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cuda_dir="${ROSETTA_CUDA13_DIR:-$HOME/.cache/rosetta/cuda13}"
cuda="$cuda_dir/nvidia/cu13"
if [[ ! -x "$cuda/bin/nvcc" ]]; then
    echo "installing CUDA 13 (nvcc, runtime, cuBLAS, cuRAND, cuSPARSE) from PyPI into $cuda_dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$cuda_dir" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-curand>=10.4,<11" "nvidia-cusparse>=12.6,<13" \
        "nvidia-nvjitlink==13.0.*"
fi
# The wheels ship only versioned libraries; the linker looks for the plain names.
for lib in "$cuda"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc,cusparse}.so.*; do
    [[ -e "$lib" ]] || continue
    plain="${lib%.so.*}.so"
    [[ -e "$plain" ]] || ln -s "$(basename "$lib")" "$plain"
done

export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export PATH="$cuda/bin:$PATH" LIBRARY_PATH="$cuda/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Kept apart from the CPU build: different features, and the kernels take minutes.
export CARGO_TARGET_DIR="${ROSETTA_CUDA_TARGET_DIR:-$HOME/.cache/rosetta/cuda-target}"
# The driver library (libcuda.so) must be on the link path; Debian's libcuda1 provides one
# (the GPU machine brings its own driver's at run time).
if ! ldconfig -p | grep -q 'libcuda\.so ('; then
    scripts/debian-non-free.sh libcuda1
fi

cargo build --release -p rosetta-gateway --features cuda --bin rosetta
cargo build --release -p rosetta-loadtest --bin rosetta-bench
test_bin="$(cargo test --release -p rosetta-engine --features cuda --test cuda --no-run \
    --message-format json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])
')"

# Stripped and gzipped: a device call carries at most 64 MiB, and the three come to ~80 MB.
rm -rf .device && mkdir -p .device
for pair in "cuda-test=$test_bin" "rosetta=$CARGO_TARGET_DIR/release/rosetta" \
    "rosetta-bench=$CARGO_TARGET_DIR/release/rosetta-bench"; do
    strip -o ".device/${pair%%=*}" "${pair#*=}"
    gzip -9 ".device/${pair%%=*}"
done
du -ch .device/* | tail -n 1
echo "carry .device and run scripts/device-cuda-check.sh on the GPU machine" >&2
