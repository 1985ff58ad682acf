#!/usr/bin/env bash
# Bamba-9B decode with each decode-kernel switch against the default, on whatever card this is (issue 15;
# bench/NOTES.md v41-v43): the default and each switch alternate, so a drift of the card shows as the two default
# rows differing. Then the step without its small ops (the GEMVs' own rate: bytes / time against the copy
# ceiling). Run on the GPU machine after `source scripts/gpu/env.sh BUNDLE`; ~6 minutes (TESTS=tg128 for less).
P="bamba bench --preset bamba-9b --device cuda --reps 2"
T=${TESTS:-tg128,decode2,decode4,decode8}
row() { grep -E "^\| bamba|rror" | cut -d'|' -f5- | tr -s ' ' | tr '\n' ' '; echo; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
bench() {  # label, "VAR=value ..." (or ""), bench arguments
  local label=$1 vars=$2; shift 2
  echo -n "$label: "
  # shellcheck disable=SC2086
  timeout 60 env $vars $P "$@" 2>&1 | row
}
bench "bf16 default" "" --tests "$T"
bench "bf16, 8 warps everywhere" BAMBA_CUDA_GEMV_WIDE=0 --tests "$T"
bench "bf16, ring depth 3" BAMBA_CUDA_GEMV_DEPTH=3 --tests "$T"
bench "bf16, ring depth 4" BAMBA_CUDA_GEMV_DEPTH=4 --tests "$T"
bench "bf16, no out_proj into L2 during the SSD step" BAMBA_CUDA_WINDOW_PREFETCH_MB=0 --tests "$T"
for mb in 16 32; do
  bench "bf16, $mb MB of out_proj into L2 during the SSD step" BAMBA_CUDA_WINDOW_PREFETCH_MB=$mb --tests "$T"
done
bench "bf16 default again" "" --tests "$T"
bench "fp8 default" "" --quantization fp8 --tests "$T"
bench "fp8, ring depth 3" BAMBA_CUDA_FP8_GEMV_DEPTH=3 --quantization fp8 --tests "$T"
bench "fp8, tensor-core GEMV at one row" BAMBA_CUDA_FP8_MMA_ROWS=1 --quantization fp8 --tests tg128
bench "fp8, gate_up as the GEMV then SwiGLU at one row" BAMBA_CUDA_FP8_ROW_PAIRS=0 --quantization fp8 --tests tg128
bench "fp8, one-wave GEMVs' rows in two warps" BAMBA_CUDA_FP8_ROW_SPLIT=2 --quantization fp8 --tests tg128
bench "fp8 with lm_head in FP8" "" --quantization fp8 --fp8-lm-head --tests "$T"
bench "fp8 with lm_head in FP8, rows in two warps" BAMBA_CUDA_FP8_ROW_SPLIT=2 --quantization fp8 --fp8-lm-head --tests tg128
bench "fp8 default again" "" --quantization fp8 --tests "$T"
small=add_rmsnorm,rmsnorm,conv1d_silu,ssd,gated_rmsnorm,attention,embed,gather_logit_rows
bench "bf16 without the small ops" "" --tests tg128,decode4 --leave-out $small
bench "bf16, 8 warps everywhere, without the small ops" BAMBA_CUDA_GEMV_WIDE=0 --tests tg128,decode4 --leave-out $small
bench "fp8 without the small ops" "" --quantization fp8 --tests tg128,decode4 --leave-out $small
