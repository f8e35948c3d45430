#!/usr/bin/env bash
# Installs what the agent and its tests need on Debian 12 (as root). Idempotent. Assumes
# only a Rust toolchain from rustup; everything else comes from Debian.
set -euo pipefail

packages=(
  gcc libc6-dev pkg-config ca-certificates          # linking, build scripts, HTTPS
  runc crun containernetworking-plugins iptables   # runtime and pod network
  iproute2                                         # `ip`, for pod network setup
  docker-registry apache2-utils skopeo umoci       # test registry, htpasswd, image tools
  busybox-static                                   # test image content
  curl                                             # HTTPS client of the kubelet API tests
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
# kubectl drives the cluster tests as a user would. Debian's own (kubernetes-client) is
# old but speaks the same API; a newer one already on PATH is kept.
if ! command -v kubectl >/dev/null; then
  echo "setup: installing kubernetes-client (kubectl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi
# Debian starts the packaged registry and containerd as services; tests run their own.
for svc in docker-registry containerd; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# rustup puts its tools in ~/.cargo/bin, which a root shell may not have on PATH.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  echo "setup: cargo is in $HOME/.cargo/bin; add it to PATH (source \$HOME/.cargo/env)" >&2
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (install it with rustup)" >&2; exit 1; }
# The test command checks formatting and lints: rustfmt and clippy must be there.
if command -v rustup >/dev/null; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  components=()
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed" || components+=("$c")
  done
  if ((${#components[@]})); then
    echo "setup: adding rust components ${components[*]}"
    rustup component add "${components[@]}"
  fi
fi
for tool in rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing (rustup component add ${tool#cargo-})" >&2; exit 1; }
done
