#!/usr/bin/env bash
# Installs what Shoal's build, tests and demo need on a fresh Debian 12 machine.
# Idempotent: installs only what is missing. Needs root for apt.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Build: a C compiler for crates with C parts (gcc is on the machine), pkg-config.
# iproute2: the lab and container networking. skopeo: the image tests check exported archives.
# libseccomp-dev: the container runtime's seccomp filters. busybox-static: the test images.
# nftables, conntrack: the cluster network (service addresses, routing mesh, NAT);
# tcpdump, iputils-ping: the network tests (what the lab switch sees, DF probes).
# docker-registry: a real OCI registry (distribution v2) the registry-client tests run on
# loopback (testkit::registry); apache2-utils: its `htpasswd -B` for the registry auth tests;
# containerd (ctr) and podman: real clients pulling through Shoal's registry mirror.
# prometheus: its `promtool check metrics` reads the agent's /metrics in the tests.
# chromium: the dashboard test drives a real (headless) browser over the DevTools protocol.
# systemd: its `systemd-analyze verify` checks the packaged unit (tests/package.rs).
for p in pkg-config iproute2 skopeo libseccomp-dev busybox-static nftables conntrack tcpdump iputils-ping \
  docker-registry apache2-utils containerd podman prometheus chromium systemd; do
  pkg_installed "$p" || need_pkgs+=("$p")
done

if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${need_pkgs[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "installing: ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The docker-registry package enables (and under systemd or sysvinit starts) a system registry on
# :5000 with htpasswd auth. The tests start their own registries on free loopback ports and need
# none: stop and disable that one service only, keeping :5000 free.
if have systemctl && systemctl is-enabled docker-registry.service >/dev/null 2>&1; then
  echo "stopping and disabling docker-registry.service (the tests run their own)" >&2
  systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi
if [[ -x /etc/init.d/docker-registry ]] && /etc/init.d/docker-registry status >/dev/null 2>&1; then
  /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi

# Likewise the prometheus package's own server (:9090): only promtool is used.
if have systemctl && systemctl is-enabled prometheus.service >/dev/null 2>&1; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

if ! have cargo-nextest && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# cargo-deb, at the version scripts/package.sh pins: the packaging test builds the .deb with it
# (installing it there would take most of that test's time limit).
bash "$(dirname "${BASH_SOURCE[0]}")/package.sh" --install-tool
