#!/usr/bin/env bash
# Where a Bamba-9B decode step's time goes, kernel by kernel, on the GPU machine (after `source scripts/gpu/env.sh
# BUNDLE`), with Nsight Compute (the machines' image has ncu; nsys there writes no report, KINDS.md):
#  1. every kernel of ~2 decode steps (tg128, bf16 then FP8 weights; graph nodes profiled one by one, so serialized:
#     no programmatic-launch overlap) with its time and DRAM bytes, summarised per kernel by trace_summary.py —
#     each kernel's own rate against the copy ceiling;
#  2. the counters (speed of light, compute and memory workload, occupancy, scheduler and warp states) of the FP8
#     warp-per-row GEMV, the bf16 tensor-core GEMV and the SSD step at one row.
# Clocks and caches left alone (--clock-control none --cache-control none: METHOD.md). Usage:
# scripts/gpu/profile_decode.sh OUT_DIR   (~5 minutes; prints the tables, leaves the CSVs in OUT_DIR)
set -uo pipefail
out=${1:?usage: profile_decode.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && { echo "no ncu on this machine"; exit 0; }
N="$NCU --clock-control none --cache-control none --graph-profiling node"
B="bamba bench --preset bamba-9b --device cuda --reps 1"
# The bench's first ~3,000 launches are the weights' fill and the prompt; a decode step is ~350.
for q in bf16 fp8; do
  a=""; [ $q = fp8 ] && a="--quantization fp8"
  # shellcheck disable=SC2086
  timeout 240 $N --launch-skip 4000 --launch-count 700 --csv --page raw --print-units base \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    $B --tests tg128 $a > "$out/kernels_$q.csv" 2> "/tmp/ncu_kernels_$q.err"
  echo "== $q: rc $?, $(wc -l < "$out/kernels_$q.csv") lines"; tail -2 "/tmp/ncu_kernels_$q.err"
  python3 "$here/trace_summary.py" "$out/kernels_$q.csv" | head -30
done
sec="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section SchedulerStats --section WarpStateStats --section LaunchStats"
prof() {  # tag, kernel regex, bench arguments
  # shellcheck disable=SC2086
  timeout 150 $N -k "regex:$2" --launch-skip 60 --launch-count 3 $sec --csv --page details \
    $B --tests decode1 "${@:3}" > "$out/ncu_$1.csv" 2> "/tmp/ncu_$1.err"
  echo "== ncu $1: rc $?, $(wc -l < "$out/ncu_$1.csv") lines"; tail -2 "/tmp/ncu_$1.err"
  grep -E '"(Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|No Eligible|Executed Ipc Active)"' \
    "$out/ncu_$1.csv" | cut -d, -f5,13- | head -24
}
prof fp8row fp8_gemv_kernel --quantization fp8
prof bf16mma gemv_mma_kernel
prof ssd ssd_step_kernel
