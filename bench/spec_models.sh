#!/bin/bash
# Two small byte-level models for measuring speculative decoding on the CPU (bench/NOTES.md v14): a corpus of
# lines of made-up words, each line repeated 3-9 times; "tiny" (the 213k-parameter preset, 400 steps) and "med"
# (12.5 M parameters: hidden 512, 4 layers, 24 steps). Neither learns to copy lines within so few steps, but both
# fall into loops ("mi mi mi ..."), which is what prompt lookup drafts well; tiny drafts for med (same tokenizer).
# Usage: bench/spec_models.sh WORKDIR [BAMBA]   -> WORKDIR/out/checkpoint-400, WORKDIR/medout/checkpoint-24
set -e
W=$1; B=${2:-build-cpu/bamba}; B=$(realpath $B); F=$(realpath ${BAMBA_FIXTURES:-../shared/fixtures})
mkdir -p $W/docs $W/tok $W/med && cd $W
python3 - <<'PY'
import random
random.seed(7)
syll = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "se", "vi", "zu", "be", "do", "fa", "gi", "ho", "ja"]
words = ["".join(random.choice(syll) for _ in range(random.randint(1, 3))) for _ in range(300)]
for f in range(20):
    with open(f"docs/d{f}.txt", "w") as o:
        for d in range(120):
            line = " ".join(random.choice(words) for _ in range(random.randint(4, 14)))
            o.write("\n".join([line] * random.randint(3, 9)) + "\n\n")
PY
python3 - "$F" <<'PY'
import json, sys
c = json.load(open(sys.argv[1] + "/models/bamba-tiny-a/config.json"))
c.update(hidden_size=512, intermediate_size=1024, mamba_d_head=64, mamba_n_heads=16, mamba_d_state=64,
         num_attention_heads=8, num_key_value_heads=4, attn_rotary_emb=32, vocab_size=258, bos_token_id=0,
         eos_token_id=1, pad_token_id=1)
json.dump(c, open("med/config.json", "w"), indent=1)
PY
$B tokenizer train docs --vocab-size 258 --special-tokens '<|begin_of_text|>,<|end_of_text|>' \
    --bos '<|begin_of_text|>' -o tok/tokenizer.json
$B data prepare docs/d{0..18}.txt --tokenizer tok/tokenizer.json --out shards/train
$B data prepare docs/d19.txt --tokenizer tok/tokenizer.json --out shards/val
run() {  # model line, steps, batch tokens, seq_len, warmup, output
  cat > $6.yml <<YML
model: $1
data:
  - {name: copy, path: shards/train}
validation:
  - {name: val, path: shards/val}
seq_len: $4
micro_batch_size: 4
batch_tokens: $3
steps: $2
eval_every: $2
eval_tokens: 8192
optimizer: {lr: 3e-3, weight_decay: 0.1}
schedule: {name: cosine, warmup_steps: $5, final_lr_ratio: 0.1}
precision: fp32
save_every: $2
output: $6
YML
  $B train $6.yml -q
}
run "{preset: tiny, tokenizer: tok}" 400 2048 256 20 out
run "{config: med/config.json, tokenizer: tok}" 24 1024 128 4 medout
