# Summarises Nsight Compute's per-kernel metrics (`ncu --csv --page raw --metrics gpu__time_duration.sum,
# dram__bytes_read.sum,dram__bytes_write.sum`, scripts/gpu/profile_decode.sh): per kernel (its name without
# namespaces, template arguments or parameters), how many, the mean time, the mean DRAM bytes and the rate they
# make, largest total time first. The kernels ran one at a time (graph nodes profiled separately), so a time here
# is the kernel's own, without the overlap that programmatic dependent launch gives inside the graph.
# Usage: python3 trace_summary.py KERNELS.csv
import collections
import csv
import re
import sys

rows = list(csv.reader(open(sys.argv[1])))
try:
    at = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
except StopIteration:
    sys.exit("no 'Kernel Name' column in " + sys.argv[1])
head = rows[at]
col = {name: head.index(name) for name in
       ("Kernel Name", "gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum")}
units = rows[at + 1] if at + 1 < len(rows) else []
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9,
         "ns": 1e-3, "us": 1.0, "ms": 1e3, "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9}  # (`--print-units base` abbreviates)


def value(r, name):
    u = units[col[name]] if col[name] < len(units) else ""
    if u not in scale:
        sys.exit(f"unknown unit {u!r} of {name} in {sys.argv[1]}")
    return float(r[col[name]].replace(",", "")) * scale[u]


def short(name):
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return name.split("::")[-1].split(" ")[-1][:44]


agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
for r in rows[at + 2:]:
    try:
        a = agg[short(r[col["Kernel Name"]])]
        us = value(r, "gpu__time_duration.sum")
        nb = value(r, "dram__bytes_read.sum") + value(r, "dram__bytes_write.sum")
    except (ValueError, IndexError):
        continue  # a row cut short
    a[0] += 1
    a[1] += us
    a[2] += nb
total = sum(a[1] for a in agg.values())
print(f"{sum(a[0] for a in agg.values())} kernels, {total:.1f} us")
print(f"{'kernel':44s} {'n':>5s} {'mean us':>8s} {'MB':>8s} {'GB/s':>7s} {'% time':>6s}")
for name, (n, us, nb) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"{name:44s} {n:5d} {us / n:8.2f} {nb / n / 1e6:8.2f} {nb / max(us, 1e-9) / 1e3:7.0f} {100 * us / total:6.1f}")
