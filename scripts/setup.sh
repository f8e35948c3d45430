#!/usr/bin/env bash
# Installs what the agent and its tests need on Debian 12 (as root). Idempotent.
set -euo pipefail

packages=(
  runc crun containernetworking-plugins iptables   # runtime and pod network
  docker-registry apache2-utils skopeo umoci      # test registry, htpasswd, image tools
  busybox-static                                   # test image content
  containerd                                       # peer CRI for interop tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged registry and containerd as services; tests run their own.
for svc in docker-registry containerd; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup)"; exit 1; }
