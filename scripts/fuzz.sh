#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, fuzz/*.cpp) into build-fuzz and runs each for
# $BAMBA_FUZZ_SECONDS seconds (default 30), seeded with a small corpus written here at run time (no fixture copies
# in the repo). Exits non-zero on a finding; the input that triggered it is kept in <build>/findings/.
# $BAMBA_FUZZ_BUILD names a build directory already configured with -DBAMBA_FUZZ=ON to use instead (scripts/test.sh
# passes its sanitizer build, whose library is compiled once for both the tests and the fuzzers).
# Usage: scripts/fuzz.sh [fuzz_target ...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BAMBA_FUZZ_SECONDS:-30}
fixtures=${BAMBA_FIXTURES:-$PWD/../shared/fixtures}

b=${BAMBA_FUZZ_BUILD:-build-fuzz}
if [ -z "${BAMBA_FUZZ_BUILD:-}" ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBAMBA_FUZZ=ON \
    -DBAMBA_TESTS=OFF -DBAMBA_CUDA=OFF >/dev/null
fi
cmake --build "$b"

work=$(mktemp -d "${TMPDIR:-/tmp}/bamba-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT

# A safetensors file: the 8-byte little-endian header length, the header, then $2 bytes of data.
safetensors() {
  local header=$1 n=${#1} i esc=""
  for i in 0 1 2 3 4 5 6 7; do esc+=$(printf '\\%03o' $(((n >> (8 * i)) & 255))); done
  printf "$esc"
  printf '%s' "$header"
  head -c "${2:-0}" /dev/zero | tr '\0' '\101'  # deterministic non-zero data
}

mkdir -p "$work/fuzz_safetensors" "$work/fuzz_config" "$work/fuzz_checkpoint_index"
safetensors '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"F16","shape":[1],"data_offsets":[22,24]},"d":{"dtype":"I32","shape":[],"data_offsets":[24,28]},"e":{"dtype":"U8","shape":[0,5],"data_offsets":[28,28]}}' 28 \
  >"$work/fuzz_safetensors/mixed"
safetensors '{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}' 8 >"$work/fuzz_safetensors/f64"
safetensors '{}' >"$work/fuzz_safetensors/empty"
for c in "$fixtures"/models/*/config.json; do  # the fixtures' real configs (4.x and 5.x), when present
  if [ -f "$c" ]; then cp "$c" "$work/fuzz_config/$(basename "$(dirname "$c")").json"; fi
done
printf '%s' '{"model_type":"bamba","hidden_size":16,"num_attention_heads":2,"num_key_value_heads":1,"num_hidden_layers":3,"layer_types":["linear_attention","full_attention","mamba"],"mamba_n_heads":4,"mamba_d_head":"auto","mamba_n_groups":2,"eos_token_id":[2,3],"time_step_limit":[0.001,{"__float__":"Infinity"}],"rope_parameters":{"rope_type":"default","rope_theta":500.0},"rope_scaling":null,"torch_dtype":"bfloat16"}' \
  >"$work/fuzz_config/small-5x.json"
printf '\001%s' 'edit recipe bytes' >"$work/fuzz_config/edits"  # fuzz_config's edit mode (see there)
printf '%s' '{"metadata":{"total_size":14},"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}' \
  >"$work/fuzz_checkpoint_index/ok.json"
mkdir -p "$work/fuzz_parquet"
cp tests/data/records/*.parquet "$work/fuzz_parquet/"  # small files from independent writers (make_files.mjs)
mkdir -p "$work/fuzz_train_config"
printf '%s\n' 'model: {preset: tiny}' 'data:' '  - {name: web, path: /d/web, weight: 0.7}' 'seq_len: 64' \
  'micro_batch_size: 2' 'batch_tokens: 512' 'tokens: 1e5' 'optimizer: {lr: 3e-4, betas: [0.9, 0.95], no_decay: [embed]}' \
  'schedule: {name: wsd, warmup_steps: 10, decay_steps: 20, decay_shape: sqrt}' 'precision: bf16-memory' \
  'max_shard_size: 2GB' >"$work/fuzz_train_config/ok.yml"
mkdir -p "$work/fuzz_structured"  # the first byte picks: odd = a regex, even = a JSON schema
printf '\001%s' '[a-c]{2,4}(x|yz)?\d+\.(?:[^"\\]|\\.)*' >"$work/fuzz_structured/regex"
printf '\000%s' '{"type":"object","properties":{"a":{"type":"string","maxLength":3},"b":{"enum":[1,"x",null]},"c":{"type":"array","items":{"type":"number"},"maxItems":2},"d":{"anyOf":[{"type":"boolean"},{"$ref":"#/$defs/e"}]}},"required":["a"],"$defs":{"e":{"type":"integer"}}}' \
  >"$work/fuzz_structured/schema"
mkdir -p "$b/findings"

targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in fuzz/*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  dict=fuzz/${t#fuzz_}.dict
  args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1 -artifact_prefix="$b/findings/$t-")
  [ -f "$dict" ] && args+=(-dict="$dict")
  if ! "$b/$t" "${args[@]}" "$work/$t" >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log"
    echo "FAIL $t: finding saved under $b/findings/ (replay: $b/$t <file>)" >&2
    exit 1
  fi
  echo "ok   $t: $(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}') runs in ${secs} s," \
    "coverage: $(grep -oE 'cov: [0-9]+' "$work/$t.log" | tail -n 1 | cut -d" " -f2) edges"
done
