#!/usr/bin/env python3
"""The recipe's report: one table of every stage's evaluation and a picture of the branches' loss curves.

usage: report.py RECIPE_OUT > report.md     (also writes RECIPE_OUT/loss_curves.svg)
Reads RECIPE_OUT/eval/<stage>.json (lm-eval's results JSON, as `bamba eval -o` writes it) and
RECIPE_OUT/<stage>/metrics.jsonl (the trainer's log). Standard library only.
"""
import json, os, sys

STAGES = ["stage1", "stage2-constant", "stage2-cosine", "anneal-constant", "anneal-cosine", "merged"]
PPL = ["kjv", "wordnet", "devil", "pydoc", "pycode"]


def load_metrics(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return rows


def table(out):
    head = ["stage", "train tokens", "final loss"] + [f"{d} bpb" for d in PPL] + ["define acc", "kjv_next acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in STAGES:
        p = os.path.join(out, "eval", s + ".json")
        if not os.path.exists(p):
            continue
        res = json.load(open(p))["results"]
        m = load_metrics(os.path.join(out, s, "metrics.jsonl"))
        tokens = f"{m[-1]['tokens'] / 1e6:.3g} M" if m else "—"
        loss = f"{m[-1]['loss']:.3f}" if m else "—"
        cells = [s, tokens, loss]
        cells += [f"{res[f'recipe_ppl_{d}']['bits_per_byte,none']:.3f}" for d in PPL]
        for t in ("recipe_define", "recipe_kjv_next"):
            r = res[t]
            cells.append(f"{100 * r['acc,none']:.1f} ± {100 * float(r['acc_stderr,none']):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def svg(out):
    """Training loss against tokens seen (from the start of stage 1) for every stage; the branches in two colours."""
    series, offset = [], {}
    s1 = load_metrics(os.path.join(out, "stage1", "metrics.jsonl"))
    if not s1:
        return None
    base = s1[-1]["tokens"]
    series.append(("stage1", "#555555", [(r["tokens"], r["loss"]) for r in s1]))
    for b, colour in (("constant", "#1f77b4"), ("cosine", "#d62728")):
        s2 = load_metrics(os.path.join(out, f"stage2-{b}", "metrics.jsonl"))
        an = load_metrics(os.path.join(out, f"anneal-{b}", "metrics.jsonl"))
        pts = [(base + r["tokens"], r["loss"]) for r in s2]
        end = base + (s2[-1]["tokens"] if s2 else 0)
        pts2 = [(end + r["tokens"], r["loss"]) for r in an]
        series.append((f"stage 2, {b} LR", colour, pts))
        series.append((f"anneal ({b} branch)", colour, pts2))
    allp = [p for _, _, pts in series for p in pts]
    x0, x1 = 0, max(p[0] for p in allp)
    losses = sorted(p[1] for p in allp)
    y0, y1 = losses[0], losses[int(0.98 * (len(losses) - 1))]  # clip the first steps' spike
    W, H, L, B = 760, 420, 60, 40
    X = lambda x: L + (W - L - 20) * (x - x0) / max(x1 - x0, 1)
    Y = lambda y: H - B - (H - B - 20) * (min(y, y1) - y0) / max(y1 - y0, 1e-9)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
             f'<line x1="{L}" y1="20" x2="{L}" y2="{H - B}" stroke="black"/>',
             f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">tokens seen (M)</text>',
             f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">train loss</text>']
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        y = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{X(x)}" y="{H - B + 15}" text-anchor="middle">{x / 1e6:.0f}</text>')
        parts.append(f'<text x="{L - 5}" y="{Y(y) + 4}" text-anchor="end">{y:.2f}</text>')
    for i, (name, colour, pts) in enumerate(series):
        if not pts:
            continue
        dash = ' stroke-dasharray="5,3"' if name.startswith("anneal") else ""
        d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{d}"/>')
        parts.append(f'<line x1="{W - 230}" y1="{30 + 16 * i}" x2="{W - 205}" y2="{30 + 16 * i}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/><text x="{W - 200}" y="{34 + 16 * i}">{name}</text>')
    parts.append("</svg>")
    path = os.path.join(out, "loss_curves.svg")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    print("bpb = bits per byte of the held-out documents (lower is better); acc in % with its standard error "
          "(chance 25 %).\n")
    print(table(out))
    p = svg(out)
    if p:
        print(f"\nLoss curves: {os.path.basename(p)}")


if __name__ == "__main__":
    main()
