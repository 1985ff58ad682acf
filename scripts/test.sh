#!/usr/bin/env bash
# The whole test suite: the normal build's tests, the same tests under ASan+UBSan, and a short fuzzing run of
# every fuzz/*.cpp target (scripts/fuzz.sh; $BAMBA_FUZZ_SECONDS per target, default 30).
# The sanitizer build is clang's, with libFuzzer's coverage hooks, so that one compile of the library serves both the
# tests and the fuzzers: g++ 12 with ASan at -O2 -g took 3-6x clang's time a file here (openai_api.cpp 96 s vs 31 s),
# and the two sanitizer builds were most of a cold CI run's 75 minutes.
# Usage: scripts/test.sh [--quick]   (--quick: normal build only)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
echo "== release build + tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure -j "$jobs"
# ctest shows a skipped test only as "(Skipped)": print why the GPU tests skipped here (nothing when a GPU ran them).
build/bamba_tests --gtest_filter='*Cuda*' 2>&1 | grep -oE "no CUDA GPU: [^)]*\)?" | sort | uniq -c || true
echo "== the recipe's smoke run: every stage for a few steps on the CPU (examples/recipe)"
BAMBA=build/bamba examples/recipe/run.sh --smoke --out build/recipe-smoke --device cpu > build/recipe-smoke.log 2>&1 \
  || { tail -40 build/recipe-smoke.log; exit 1; }
tail -12 build/recipe-smoke.log
[ "${1:-}" = "--quick" ] && exit 0
echo "== ASan+UBSan build (clang) + tests (CPU code: no GPU here, and ASan does not cover device code)"
CC=clang CXX=clang++ cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBAMBA_FUZZ=ON \
  -DBAMBA_CUDA=OFF >/dev/null
cmake --build build-san
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-san --output-on-failure -j "$jobs"
echo "== fuzz: libFuzzer + ASan + UBSan (the same build), ${BAMBA_FUZZ_SECONDS:-30} s per target"
BAMBA_FUZZ_BUILD=build-san scripts/fuzz.sh
