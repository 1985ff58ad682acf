# Summarises an nsys cuda_gpu_trace CSV (scripts/gpu/profile_decode.sh): per kernel (name without its template
# arguments), how many, the mean time, and the mean gap before it — its start minus the latest end of the kernels
# before it (negative: it overlapped them, as programmatic dependent launch allows) — largest total first.
# Usage: python3 trace_summary.py TRACE.csv
import collections
import csv
import re
import sys

rows = list(csv.reader(open(sys.argv[1])))
head = rows[0]
i_start, i_dur, i_name = head.index("Start (ns)"), head.index("Duration (ns)"), head.index("Name")
kernels = []
for r in rows[1:]:
    try:
        kernels.append((int(r[i_start]), int(r[i_dur]), r[i_name]))
    except (ValueError, IndexError):
        pass  # a row cut short, or a memcpy's
kernels.sort()
if not kernels:
    sys.exit("no kernel rows in " + sys.argv[1])


def short(name):
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return name.split("::")[-1].split(" ")[-1][:44]


agg = collections.defaultdict(lambda: [0, 0, 0])
last_end = None
for start, dur, name in kernels:
    a = agg[short(name)]
    a[0] += 1
    a[1] += dur
    if last_end is not None:
        a[2] += start - last_end
    last_end = max(last_end or 0, start + dur)
span = kernels[-1][0] + kernels[-1][1] - kernels[0][0]
print(f"{len(kernels)} kernels over {span / 1e3:.1f} us")
print(f"{'kernel':44s} {'n':>6s} {'mean us':>8s} {'gap us':>7s} {'total us':>9s}")
for name, (n, dur, gap) in sorted(agg.items(), key=lambda x: -(x[1][1] + x[1][2])):
    print(f"{name:44s} {n:6d} {dur / n / 1e3:8.2f} {gap / n / 1e3:7.2f} {(dur + gap) / 1e3:9.1f}")
