#!/usr/bin/env bash
# One entry point for a fresh machine (root, Python 3.11, Debian):
#   scripts/dev.sh demo   install what is needed, then run `tas demo`
#   scripts/dev.sh test   install what is needed, then run the test suite
# Installing is idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/dev.sh: run as root (the stack opens TAP devices and network namespaces)" >&2
        exit 2
    fi
}

install_deps() {
    local pkgs=()
    command -v nft >/dev/null || pkgs+=(nftables)
    command -v ip >/dev/null || pkgs+=(iproute2)
    command -v ping >/dev/null || pkgs+=(iputils-ping)
    command -v gcc >/dev/null || pkgs+=(gcc)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v redis-cli >/dev/null || pkgs+=(redis-tools)
    command -v unshare >/dev/null || pkgs+=(util-linux)
    command -v ss >/dev/null || pkgs+=(iproute2)
    if [ ${#pkgs[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
    python3 -m pip install -q --disable-pip-version-check -e '.[test,plot]'
}

case "${1:-}" in
    demo)
        need_root
        install_deps
        shift
        exec tas demo "$@"
        ;;
    test)
        need_root
        install_deps
        shift
        exec python3 -m pytest -q "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh demo|test [args...]" >&2
        exit 2
        ;;
esac
