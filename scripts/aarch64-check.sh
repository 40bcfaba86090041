#!/usr/bin/env bash
# Builds the workspace for aarch64 Linux (Graviton, Ampere, Apple silicon under Linux), where
# only the engine's portable kernels exist, and runs the engine's tests there under qemu's
# user-mode emulation. Not part of CI: about 40 minutes on 2 cores (8 to build, 22 for the
# emulated int8_logits tests). Run it after changing code behind `#[cfg(target_arch = ...)]`.
#
#   scripts/aarch64-check.sh                  # clippy for aarch64, then the engine's tests
#   scripts/aarch64-check.sh --lib            # extra arguments go to `cargo test`
#
# Installs what it needs: rustup's aarch64 standard library, and the Debian packages
# gcc-aarch64-linux-gnu (the C parts of some crates, and the linker) and qemu-user.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-gnu

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
source scripts/apt-install.sh
apt_install "${missing[@]}"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# A target directory of its own: the x86 build's stays as it is.
dir=(--target "$target" --target-dir target/aarch64-check)
cargo clippy "${dir[@]}" --workspace --all-targets -- -D warnings
# Release: the kernels' tests are slow enough emulated without optimisation.
cargo test "${dir[@]}" --release -p rosetta-engine "$@"
