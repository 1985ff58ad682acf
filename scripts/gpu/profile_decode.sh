#!/usr/bin/env bash
# Where a Bamba-9B decode step's time goes, kernel by kernel, on the GPU machine (after `source scripts/gpu/env.sh
# BUNDLE`): an nsys trace of tg128 in its CUDA graph (bf16 weights, then FP8) summarised by trace_summary.py —
# per kernel, its mean time and the mean gap before it (the dependent-launch chain's cost) — and, where ncu is
# there, its counters for the FP8 warp-per-row GEMV, the bf16 tensor-core GEMV and the SSD step at one row.
# Usage: scripts/gpu/profile_decode.sh OUT_DIR   (~4 minutes; prints what it finds, leaves the CSVs in OUT_DIR)
set -uo pipefail
out=${1:?usage: profile_decode.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
find_tool() { command -v "$1" || ls /usr/local/cuda*/bin/"$1" /opt/nvidia/nsight-*/*/bin/"$1" /opt/nvidia/nsight-*/"$1" 2>/dev/null | head -1; }
NSYS=$(find_tool nsys) NCU=$(find_tool ncu)
echo "nsys: ${NSYS:-none}  ncu: ${NCU:-none}"
B="bamba bench --preset bamba-9b --device cuda --reps 1"
if [ -n "$NSYS" ]; then
  for q in bf16 fp8; do
    a=""; [ $q = fp8 ] && a="--quantization fp8"
    # shellcheck disable=SC2086
    timeout 200 "$NSYS" profile -q -o "/tmp/decode_$q" -t cuda --cuda-graph-trace=node -f true $B --tests tg128 $a 2>&1 | tail -2
    timeout 150 "$NSYS" stats -q -r cuda_gpu_trace -f csv -o "/tmp/decode_$q" "/tmp/decode_$q.nsys-rep" >/dev/null 2>&1
    f=$(ls /tmp/decode_${q}*cuda_gpu_trace*.csv 2>/dev/null | head -1)
    [ -z "$f" ] && { echo "no trace for $q"; continue; }
    { head -1 "$f"; tail -3000 "$f"; } | cut -c1-600 > "$out/trace_$q.csv"  # ~10 decode steps
    echo "== $q"; python3 "$here/trace_summary.py" "$out/trace_$q.csv" | head -40
  done
fi
if [ -n "$NCU" ]; then
  sec="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section SchedulerStats --section WarpStateStats --section LaunchStats"
  prof() {  # tag, kernel regex, bench arguments
    # shellcheck disable=SC2086
    timeout 150 "$NCU" --graph-profiling node -k "regex:$2" --launch-skip 60 --launch-count 3 $sec --csv --page details \
      $B --tests decode1 "${@:3}" > "$out/ncu_$1.csv" 2> "/tmp/ncu_$1.err"
    echo "ncu $1: rc $?, $(wc -l < "$out/ncu_$1.csv") lines"; tail -2 "/tmp/ncu_$1.err"
    grep -E '"(Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|No Eligible|Executed Ipc Active)"' \
      "$out/ncu_$1.csv" | cut -d, -f5,13- | head -24
  }
  prof fp8row fp8_gemv_kernel --quantization fp8
  prof bf16mma gemv_mma_kernel
  prof ssd ssd_step_kernel
fi
