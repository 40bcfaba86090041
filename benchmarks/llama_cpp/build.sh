#!/usr/bin/env bash
# Build llama.cpp's llama-server (CPU, Release) from the llama.cpp tree that is
# vendored inside the llama-cpp-python sdist on PyPI, and install that tree's
# gguf-py (plus safetensors) into a venv for hf_to_gguf.py.
#
# Everything (venv, sdist, sources, build) goes under benchmarks/.work/, which
# is git-ignored. Idempotent: each step is skipped when already done.
#
# Environment overrides:
#   LLAMA_CPP_PYTHON_VERSION  PyPI version of llama-cpp-python (default below)
#   JOBS                      parallel build jobs (default 2)
#   WORK                      work directory (default benchmarks/.work)
#   ISA                       avx512 (default) or avx2: the widest kernels llama.cpp may
#                             use; avx2 builds what an AVX2-only host runs (Zen 2 and 3),
#                             beside the default build, for runs with ROSETTA_MAX_CPU_ISA=avx2
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="$(cd "$HERE/.." && pwd)"
WORK="${WORK:-$BENCH/.work}"
VENV="$WORK/venv"
SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
SRC="$WORK/llama_cpp_python-$VERSION"
TREE="$SRC/vendor/llama.cpp"
ISA="${ISA:-avx512}"
case "$ISA" in
    avx512) WIDE=(-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON) ;;
    avx2) WIDE=(-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX512_VBMI=OFF) ;;
    *) echo "[build.sh] ISA=$ISA: use avx512 or avx2" >&2; exit 2 ;;
esac
BUILD="$WORK/build-llama-server-$VERSION-$ISA"
BIN="$BUILD/bin/llama-server"

log() { printf '[build.sh] %s\n' "$*" >&2; }
mkdir -p "$WORK"

# 1. venv
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 2. sdist. Only llama-cpp-python itself is taken as source; its build
#    backend (scikit-build-core), which pip runs to read the metadata, may come
#    as a wheel ("--no-binary :all:" would also force cmake and friends to be
#    compiled from source just to prepare metadata, which takes ages).
if [[ ! -f "$SDIST" ]]; then
    log "downloading llama-cpp-python==$VERSION sdist"
    "${PIP[@]}" download --no-binary llama-cpp-python --no-deps \
        "llama-cpp-python==$VERSION" -d "$WORK"
fi

# 3. extract
if [[ ! -f "$TREE/CMakeLists.txt" ]]; then
    log "extracting $SDIST"
    tar -xzf "$SDIST" -C "$WORK"
fi
[[ -f "$TREE/CMakeLists.txt" ]] || { log "no llama.cpp tree at $TREE"; exit 1; }

# 4. build tools and python deps (cmake from PyPI; gguf-py pulls numpy itself)
if [[ ! -x "$VENV/bin/cmake" ]]; then
    log "installing cmake into venv"
    "${PIP[@]}" install --quiet cmake
fi
if ! "$PY" -c 'import gguf, safetensors, numpy' 2>/dev/null; then
    log "installing gguf-py from $TREE/gguf-py, and safetensors"
    "${PIP[@]}" install --quiet "$TREE/gguf-py" safetensors
fi
CMAKE="$VENV/bin/cmake"

# 5. configure + build llama-server and llama-quantize.
#    - LLAMA_BUILD_UI=OFF and LLAMA_USE_PREBUILT_UI=OFF: no npm build and no
#      download of the web UI; ui-assets.cmake then embeds an empty asset table
#      (the server still serves the API, just no web page).
#    - LLAMA_CURL is deprecated in this tree (no-op); passed anyway as asked.
#    - LLAMA_OPENSSL=OFF: no HTTPS needed for a loopback benchmark.
#    - GGML_NATIVE=OFF with the features named: -march=native builds die with SIGILL on
#      this VM (it advertises more than it runs), so AVX2/FMA/F16C and AVX-512 with VNNI,
#      BF16 and VBMI (ISA=avx512) are enabled one by one, and AMX (which the kernel does not grant
#      here) stays off. llama-quantize is built beside the server, for Q8_0 and Q4_K_M.
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    log "configuring $BUILD"
    "$CMAKE" -S "$TREE" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        "${WIDE[@]}" \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
fi
if [[ ! -x "$BIN" || ! -x "$BUILD/bin/llama-quantize" ]]; then
    log "building llama-server and llama-quantize with -j$JOBS (this takes a while on 2 cores)"
    start=$(date +%s)
    "$CMAKE" --build "$BUILD" --config Release --target llama-server llama-quantize -j "$JOBS"
    log "build took $(( $(date +%s) - start ))s"
fi
[[ -x "$BIN" ]] || { log "llama-server not found at $BIN"; exit 1; }

echo "$BIN"
