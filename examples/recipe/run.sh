#!/usr/bin/env bash
# The Bamba v2 recipe end to end at small scale (README.md beside this script):
#   corpora -> tokenizer -> token shards -> stage 1 (mixture 1) -> stage 2 in two branches (constant / cosine LR,
#   mixture 2) -> each branch annealed (high-quality mixture) -> the two merged (linear) -> every stage evaluated.
#
# usage: examples/recipe/run.sh [--smoke] [--out DIR] [--device cpu|cuda|auto] [--tokens-scale F]
#   --smoke          a few steps of every stage on a tiny shape and a sliver of the corpora (a minute on a CPU; CI)
#   --tokens-scale   multiply every stage's `tokens` by F (a shorter or longer run of the same recipe)
# env: BAMBA (the binary, default build/bamba), CORPORA (an already prepared corpora folder: skip step 1)
# Needs the Debian packages that corpora.sh lists (scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
smoke=0 out=recipe-out device=auto scale=1
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) smoke=1 ;;
    --out) out=$2; shift ;;
    --device) device=$2; shift ;;
    --tokens-scale) scale=$2; shift ;;
    *) echo "usage: $0 [--smoke] [--out DIR] [--device cpu|cuda|auto] [--tokens-scale F]" >&2; exit 2 ;;
  esac
  shift
done
bamba=$(realpath "${BAMBA:-$repo/build/bamba}")
mkdir -p "$out" && cd "$out"
log() { printf '\n== %s  (%s)\n' "$*" "$(date +%T)"; }
t0=$(date +%s)

# 1. corpora (JSONL per dataset, held-out splits, the multiple-choice tasks) under data/recipe/
log "corpora"
if [ -n "${CORPORA:-}" ]; then mkdir -p data && ln -sfn "$(realpath "$CORPORA")" data/recipe
else python3 "$here/corpora.py" data/recipe $([ $smoke = 1 ] && echo --max-mb 0.3); fi

# 2. tokenizer: byte-level BPE on the training splits (Llama-3's split regex; BOS/EOS/PAD as ids 0, 1, 2)
log "tokenizer"
vocab=8192; [ $smoke = 1 ] && vocab=1024
mkdir -p tokenizer
"$bamba" tokenizer train data/recipe/raw/*/train.jsonl --vocab-size $vocab --split llama3 -q \
  --special-tokens "<|begin_of_text|>,<|end_of_text|>,<|pad|>" --bos "<|begin_of_text|>" -o tokenizer/tokenizer.json
cat > tokenizer/tokenizer_config.json <<'EOF'
{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>", "add_bos_token": true,
 "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"}
EOF

# 3. token shards, one dataset per folder, documents separated by BOS as in Bamba's pretraining
log "shards"
for d in kjv wordnet devil pydoc pycode; do
  "$bamba" data prepare "data/recipe/raw/$d/train.jsonl" --tokenizer tokenizer/tokenizer.json -o "shards/$d" --force -q
done

# 4. the configs: as committed, or shrunk for --smoke (a tiny shape, a few steps of every stage)
rm -rf configs && cp -r "$here/configs" configs
if [ $smoke = 1 ]; then
  sed -i -e 's/"vocab_size": [0-9]*/"vocab_size": 1024/' -e 's/"hidden_size": [0-9]*/"hidden_size": 64/' \
    -e 's/"intermediate_size": [0-9]*/"intermediate_size": 96/' -e 's/"num_hidden_layers": [0-9]*/"num_hidden_layers": 4/' \
    -e 's/"attn_layer_indices": \[[0-9, ]*\]/"attn_layer_indices": [2]/' -e 's/"num_attention_heads": [0-9]*/"num_attention_heads": 2/' \
    -e 's/"head_dim": [0-9]*/"head_dim": 32/' -e 's/"mamba_n_heads": [0-9]*/"mamba_n_heads": 4/' \
    -e 's/"mamba_d_head": [0-9]*/"mamba_d_head": 32/' -e 's/"mamba_d_state": [0-9]*/"mamba_d_state": 16/' \
    -e 's/"mamba_chunk_size": [0-9]*/"mamba_chunk_size": 16/' configs/model.json
  sed -i -e 's/^seq_len: .*/seq_len: 64/' -e 's/^micro_batch_size: .*/micro_batch_size: 2/' \
    -e 's/^batch_tokens: .*/batch_tokens: 256/' -e 's/^tokens: .*/steps: 3/' -e 's/warmup_steps: [0-9]*/warmup_steps: 1/' \
    configs/*.yml
elif [ "$scale" != 1 ]; then
  for f in configs/*.yml; do
    t=$(sed -n 's/^tokens: //p' "$f"); [ -n "$t" ] && sed -i "s/^tokens: .*/tokens: $(python3 -c "print(int(float('$t') * $scale))")/" "$f"
  done
fi

# 5. training: each stage starts from the previous stage's final checkpoint (stageN/final -> checkpoint-<last>)
train() {
  log "train $1"
  rm -rf "$1"
  "$bamba" train "configs/$1.yml" --device "$device" $([ $smoke = 1 ] && echo -q)
  ln -sfn "$(basename "$(ls -d "$1"/checkpoint-* | sort -V | tail -1)")" "$1/final"
}
train stage1
for b in constant cosine; do train stage2-$b; done
for b in constant cosine; do train anneal-$b; done

# 6. merge: the two annealed branches averaged (MergeKit's linear method)
log "merge"
"$bamba" merge configs/merge.yml -o merged --force -q

# 7. evaluation of every stage: held-out perplexity per dataset + the two multiple-choice tasks
log "eval"
limit=""; [ $smoke = 1 ] && limit="--limit 4"
mkdir -p eval
for s in stage1 stage2-constant stage2-cosine anneal-constant anneal-cosine merged; do
  m=$s/final; [ $s = merged ] && m=merged
  "$bamba" eval -m "$m" --device "$device" --tasks-dir "$here/tasks" --data-dir data --tasks recipe $limit -q \
    -o "eval/$s.json" > "eval/$s.log" 2>&1 || { cat "eval/$s.log"; exit 1; }
done
python3 "$here/report.py" . > report.md
cat report.md
log "done in $(( $(date +%s) - t0 )) s: $out/merged is the result, $out/report.md the table"
