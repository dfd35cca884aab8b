#!/usr/bin/env python3
"""Joins the CSVs of //cuda/bench:ops_bench and tools/bench_torch.py into one Markdown table.

Rows are matched on (op, shape, dtype, pass). "torch / ours" is PyTorch's time over ours:
above 1, ours is faster. "% copy" is each side's achieved GB/s over the copy bandwidth it
measured in its own run, and "x floor" our time over the floor computed from our ceilings.

Usage: python3 tools/bench_compare.py ours.csv torch.csv > joined.md
"""

import csv
import sys


def load(path):
    rows, ceilings = {}, {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["op"].startswith("ceiling_"):
                key = "copy GB/s" if r["op"] == "ceiling_copy" else f"gemm {r['dtype']} TFLOP/s"
                ceilings[key] = float(r["gbps"] or r["tflops"])
                continue
            rows[(r["op"], r["shape"], r["dtype"], r["pass"])] = r
    return rows, ceilings


def num(r, key):
    return float(r[key]) if r is not None and r.get(key) else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench_compare.py ours.csv torch.csv")
    ours, our_ceil = load(sys.argv[1])
    torch_rows, torch_ceil = load(sys.argv[2])
    print("| ceiling | ours | torch |")
    print("|---|---:|---:|")
    for k in our_ceil:
        print(f"| {k} | {our_ceil[k]:.1f} | {fmt(torch_ceil.get(k), '.1f')} |")
    print()
    print("| op | shape | dtype | pass | ours ms | torch ms | torch / ours | ours % copy "
          "| torch % copy | ours TFLOP/s | torch TFLOP/s | ours x floor |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = list(ours) + [k for k in torch_rows if k not in ours]
    for k in keys:
        a, b = ours.get(k), torch_rows.get(k)
        ms_a, ms_b = num(a, "ms"), num(b, "ms")
        ratio = ms_b / ms_a if ms_a and ms_b else None
        print(f"| {' | '.join(k)} | {fmt(ms_a, '.4f')} | {fmt(ms_b, '.4f')} | "
              f"{fmt(ratio, '.2f')} | {fmt(num(a, 'pct_copy'), '.1f')} | "
              f"{fmt(num(b, 'pct_copy'), '.1f')} | {fmt(num(a, 'tflops'), '.2f')} | "
              f"{fmt(num(b, 'tflops'), '.2f')} | {fmt(num(a, 'x_floor'), '.2f')} |")


if __name__ == "__main__":
    main()
