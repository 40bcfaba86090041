#!/usr/bin/env bash
# Installs Debian packages from bookworm's contrib and non-free components (the CUDA toolkit,
# the NVIDIA driver library), which a default Debian image does not list. Root only.
#
#   scripts/debian-non-free.sh nvidia-cuda-toolkit
set -euo pipefail
if [[ ! -r /etc/debian_version || "$(id -u)" != 0 ]]; then
    echo "needs root on Debian to install: $*" >&2
    exit 1
fi
cat > /etc/apt/sources.list.d/rosetta-non-free.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
