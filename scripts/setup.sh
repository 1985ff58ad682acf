#!/usr/bin/env bash
# Installs every Debian package bamba needs, then configures and builds (Release) into ./build.
# Usage: scripts/setup.sh            (run as root or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential cmake ninja-build ccache pkg-config
      nlohmann-json3-dev libpcre2-dev libopenblas-dev libcli11-dev libcpp-httplib-dev libyaml-cpp-dev
      libgtest-dev libgmock-dev libbenchmark-dev clang lld libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build
