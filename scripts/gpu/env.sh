# source scripts/gpu/env.sh BUNDLE.tar.xz [FIXTURES_DIR]: on the GPU machine, from the repository's root — unpacks
# a scripts/gpu/pack.sh bundle into /tmp/b, puts it on PATH, finds the machine's CUDA 13 libraries (the system's or
# a Python venv's nvidia/* wheels), and points the tests at the fixtures (default: ./fixtures, carried beside the
# bundle) and at this checkout as their source tree: tests read tests/data from the source directory compiled in
# (BAMBA_SOURCE_DIR; $BUILD_SOURCE_DIR, default /work/main, where it was built), linked here to this checkout.
rm -rf /tmp/b && mkdir -p /tmp/b && tar -xJf "$1" -C /tmp/b
cu=""
for n in libcublasLt.so.13 libcudart.so.13 libnccl.so.2 libcublas.so.13; do
  f=$(find /usr/local /opt /usr/lib -name "$n*" 2>/dev/null | head -1)
  [ -n "$f" ] && case "$cu:" in *":$(dirname "$f"):"*) ;; *) cu="$cu:$(dirname "$f")" ;; esac
done
export LD_LIBRARY_PATH=/tmp/b/lib$cu PATH=/tmp/b:$PATH BAMBA_BIN=/tmp/b/bamba
export BAMBA_FIXTURES=$(realpath "${2:-fixtures}")
ldd /tmp/b/bamba | grep "not found" && echo "env.sh: a library is missing" >&2
src=${BUILD_SOURCE_DIR:-/work/main}
[ -e "$src" ] || { mkdir -p "$(dirname "$src")" && ln -sfn "$(pwd)" "$src"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
