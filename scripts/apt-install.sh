# Sourced by the scripts that need Debian packages: `apt_install PACKAGE...` installs them,
# with sudo unless root, refreshing the package lists only if the first try fails.
apt_install() {
    (($#)) || return 0
    echo "installing Debian packages: $*" >&2
    local sudo=()
    [[ "$(id -u)" -ne 0 ]] && sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null \
        || { "${sudo[@]}" apt-get update -qq \
            && "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null; }
}
