#!/usr/bin/env bash
# The one command that runs every test: installs what it needs, checks formatting and
# lints, then runs unit, integration and end-to-end tests (as root: real registry,
# overlayfs, runc, CNI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "tests need root (mounts, namespaces, cgroups): run with sudo" >&2
  exit 1
fi
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
