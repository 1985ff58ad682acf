#!/usr/bin/env bash
# Packs what a GPU machine without our Debian toolchain needs to run a build: the binaries (stripped) and the shared
# libraries they link that an Ubuntu 24.04 + CUDA 13 image lacks (Debian's yaml-cpp, cpp-httplib, OpenBLAS, ...),
# but not CUDA's own (cuBLAS, cudart, NCCL: env.sh finds the machine's). Unpack and run with env.sh.
# Usage: scripts/gpu/pack.sh BUILD_DIR OUT.tar.xz [more binaries of BUILD_DIR, e.g. bamba_tests]
set -euo pipefail
b=$1 out=$2
shift 2
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/lib"
for x in bamba "$@"; do cp "$b/$x" "$t/" && strip "$t/$x"; done
for x in bamba "$@"; do ldd "$b/$x"; done | awk '/=>/ {print $3}' | sort -u | while read -r l; do
  case $(basename "$l") in
    libc.so* | libm.so* | libpthread* | libdl.so* | librt.so* | ld-linux* | libgcc_s* | libstdc++* | libcuda.so* | \
      libcublas* | libcudart* | libnccl*) ;;
    *) cp -L "$l" "$t/lib/" ;;
  esac
done
tar -C "$t" -cJf "$out" .
ls -la "$out"
