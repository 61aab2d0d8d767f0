#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for wgfast: the system tools the tunnel and its
# tests meet (wg, wg-quick, wireguard-go, iperf3, ip, ping, ncat, iptables), then wgfast itself, editable, with
# its test and benchmark extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
if command -v apt-get >/dev/null; then
    apt-get update -qq
    # --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
    # ncat, iptables: what netns-style tests (wireguard-go's tests/netns.sh) use.
    # python3-dev: Python.h, to compile the C extension; python3-pip: a fresh Debian has no pip.
    apt-get install -y -qq --no-install-recommends \
        wireguard-tools wireguard-go iperf3 iproute2 iputils-ping procps ncat iptables \
        gcc libc6-dev libssl3 python3 python3-dev python3-pip python3-setuptools >/dev/null
    # Intel's multi-buffer crypto library: an optional, faster AEAD backend where it exists.
    apt-get install -y -qq --no-install-recommends libipsec-mb1 >/dev/null 2>&1 || true
fi
# Debian's own python3 is "externally managed" (PEP 668): pip refuses to install into it unless
# told to.  The packages go to /usr/local, where Debian's tools leave them alone; this is what
# lets `wgfast` and `python3 -m pytest` work straight away, without activating a venv.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'
# The editable install leaves the compiled module in the checkout; build it there explicitly
# too, so `python3 -m pytest` from this folder always finds it.
python3 setup.py -q build_ext --inplace >/dev/null
