#!/usr/bin/env bash
# The whole test set-up on a fresh Debian/Ubuntu machine: installs what the tests
# need (Mesa's lavapipe, a Vulkan device on the CPU, for the wgpu backend), then
# checks formatting and lints and runs every test of the workspace.
# Tests that need a GPU this machine lacks (CUDA) skip with a printed reason,
# unless KASMINA_REQUIRE_GPU=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing mesa-vulkan-drivers (lavapipe) for the wgpu tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "note: Mesa's lavapipe is not installed and cannot be installed here (not root);"
    echo "      the wgpu tests will skip unless another adapter is found."
  fi
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --release
