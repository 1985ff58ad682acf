#!/usr/bin/env bash
# Installs every Debian package bamba needs, then configures and builds (Release) into ./build.
# Usage: scripts/setup.sh            (run as root or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential cmake ninja-build ccache pkg-config
      nlohmann-json3-dev libpcre2-dev libopenblas-dev libcli11-dev libcpp-httplib-dev libyaml-cpp-dev
      libsnappy-dev libzstd-dev zlib1g-dev liblz4-dev
      libgtest-dev libgmock-dev libbenchmark-dev clang lld libclang-rt-14-dev curl nodejs
      python3-langdetect  # its 55 language profiles, read at run time by src/eval/langdetect (IFEval)
      bible-kjv wordnet-base dict-devil python3-doc)  # the corpora of examples/recipe (its README: licenses)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v npm >/dev/null || missing+=(npm)  # (NodeSource's nodejs bundles npm; Debian's is a separate package)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# The server tests drive `bamba serve` with the official openai npm client (tests/js, pinned by its lock file).
(cd tests/js && npm ci --no-audit --no-fund)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build
