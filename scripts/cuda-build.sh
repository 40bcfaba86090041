#!/usr/bin/env bash
# Builds `rosetta` with the engine's CUDA path (`--features cuda`) and, where an NVIDIA GPU is
# present, runs the test that compares its logits with the CPU path's. Not part of CI: the CI
# machine has no GPU, and the CUDA kernels take about ten minutes to compile on two cores.
#
# Needs nvcc. On Debian bookworm, run as root, it installs nvidia-cuda-toolkit (CUDA 11.8,
# about 2.3 GB) from Debian's non-free component when nvcc is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null; then
    scripts/debian-non-free.sh nvidia-cuda-toolkit \
        || { echo "nvcc not found: install the CUDA toolkit (11.8 or later) and run this again" >&2; exit 1; }
fi

# The kernels are compiled for one compute capability: the GPU's, else Ampere (8.0).
gpu_cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d . || true)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-${gpu_cap:-80}}"
echo "building for compute capability $CUDA_COMPUTE_CAP"

cargo build --release -p rosetta-gateway --features cuda
cargo test --release -p rosetta-engine --features cuda --no-run
if nvidia-smi >/dev/null 2>&1; then
    cargo test --release -p rosetta-engine --features cuda --test cuda -- --ignored
else
    echo "no GPU here: built, not run"
fi
