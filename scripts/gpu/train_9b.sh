#!/usr/bin/env bash
# The whole Bamba-9B's training bench on one H200 (issue 10; bench/NOTES.md v32, v34): 16k-token steps in the
# memory mode, with each kind of checkpointing. Run on the GPU machine after `source scripts/gpu/env.sh BUNDLE`.
# A run that does not fit says "out of memory" and the next one goes on.
B="bamba train --bench --device cuda --preset bamba-9b --seq-len 4096 --bench-steps 2 --precision bf16-memory
   --peak-tflops 989 --batch-tokens 16384"
for m in "" "--activation-checkpointing=selective --checkpoint-layers 8" "--activation-checkpointing=selective" \
         "--activation-checkpointing"; do
  echo "== ${m:-no checkpointing}"
  # shellcheck disable=SC2086
  timeout 150 $B $m 2>&1 | grep -E "^bench|^train bench|rror|out of memory"
done
