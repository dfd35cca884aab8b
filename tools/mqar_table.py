#!/usr/bin/env python3
"""Prints the MQAR table of a sweep: RUNS/<backbone>/<variant>/d<D>_T<T>/metrics.jsonl ->
one row per (backbone, variant), one column per (T, d_model), the last evaluation's test
accuracy (and the steps it was measured at).

    python3 tools/mqar_table.py runs/mqar
"""
import json
import os
import sys


def main(root):
    cells = {}
    for dirpath, _, files in os.walk(root):
        if "metrics.jsonl" not in files:
            continue
        rel = os.path.relpath(dirpath, root).split(os.sep)
        if len(rel) != 3:
            continue
        backbone, variant, cell = rel
        acc, step = None, None
        with open(os.path.join(dirpath, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "eval_accuracy" in rec:
                    acc, step = rec["eval_accuracy"], rec["step"]
        d, t = cell.split("_")
        cells[(backbone, variant, int(t[1:]), int(d[1:]))] = (acc, step)
    cols = sorted({(k[2], k[3]) for k in cells})
    rows = sorted({(k[0], k[1]) for k in cells})
    print("| backbone | variant | " + " | ".join(f"T={t} d={d}" for t, d in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for b, v in rows:
        vals = []
        for t, d in cols:
            acc, step = cells.get((b, v, t, d), (None, None))
            vals.append("" if acc is None else f"{acc:.4f} ({step})")
        print(f"| {b} | {v} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/mqar")
