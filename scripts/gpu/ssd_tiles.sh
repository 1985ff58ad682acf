#!/usr/bin/env bash
# The SSD backward's register tile kernels (BAMBA_SSD_TILES=mma) against the wmma ones on a GPU (issue 10; bench/NOTES
# v35, v36): their tests, one layer's kernel times in both forms, and 12 of the 9B's layers at 16k-token steps in
# both. Run on the GPU machine after `source scripts/gpu/env.sh BUNDLE FIXTURES` (a bundle with bamba_tests); ~5 min
# on an H100. The register forms are the default since v36 (kWmmaByDefault in ssd_backward_chunked.cu): this is the
# comparison to run again after a change to either form.
BAMBA_SSD_TILES=mma timeout 150 "$(dirname "$BAMBA_BIN")/bamba_tests" \
  --gtest_filter='*CudaTrainOps*Ssd*:*CudaTrainOps*AttentionBackward*' 2>&1 |
  grep -E "ssd_backward|relative L2|OK \]|FAILED|PASSED|rror"
for f in mma wmma; do
  echo "== one layer's SSD backward kernels, BAMBA_SSD_TILES=$f"
  BAMBA_SSD_TILES=$f BAMBA_SSD_BWD_PROFILE=1 timeout 60 bamba train --bench --device cuda --preset bamba-9b \
    --seq-len 4096 --bench-steps 1 --bench-layers 2 2>&1 | grep ssd_backward_chunked | tail -1
done
for f in mma wmma; do
  echo "== 12 layers, 16k-token steps, BAMBA_SSD_TILES=$f"
  BAMBA_SSD_TILES=$f timeout 150 bamba train --bench --device cuda --preset bamba-9b --seq-len 4096 --bench-steps 2 \
    --precision bf16-memory --peak-tflops 989 --batch-tokens 16384 --bench-layers 12 2>&1 |
    grep -E "^bench|^train bench|rror|out of memory"
done
