#!/usr/bin/env python3
"""Writes configs/mqar/: one run config per cell of the paper's MQAR table (appendix C.3).

Rows: backbone x {plain, Resona at layer 0, Resona at layer 2} of a 4-layer model; columns:
sequence length (with its number of key-value pairs) x d_model. Each file is a complete
`resona train --config` run; its run_dir is runs/mqar/<backbone>/<variant>/<cell>.

    python3 tools/mqar_configs.py            # rewrites configs/mqar/
"""
import os
import shutil

BACKBONES = ["gla", "deltanet", "retnet", "mamba", "mamba2"]
VARIANTS = {"plain": None, "resona_l0": 0, "resona_l2": 2}
LENGTHS = [(64, 4), (128, 8), (256, 16), (512, 32)]
D_MODELS = [32, 64, 128, 256]

HEADER = """\
# MQAR (Zoology's multi-query associative recall, vocabulary 8192), the paper's appendix
# C.3 setting: {backbone}, 4 layers, d_model {d}, length {T} with {kv} key-value pairs,
# {variant_text}.
# Written by tools/mqar_configs.py; run with
#   resona train --config configs/mqar/{path}
# The test accuracy (Zoology's: per example, over the labelled positions) is logged at
# each evaluation and stored in RUN_DIR/metrics.jsonl as eval_accuracy.
"""


def body(backbone, variant, d, T, kv):
    layer = VARIANTS[variant]
    lines = [
        "model:",
        f"  name: {backbone}",
        "  vocab_size: 8192",
        f"  hidden_size: {d}",
        "  num_layers: 4",
        "  tie_embeddings: true",
    ]
    if backbone == "mamba2":
        # Heads of size 32 (2 d_model / 32 heads); 64 would leave one head at d_model 32.
        lines.append("  mamba2: {head_dim: 32, state_size: 64, chunk_size: 64}")
    if layer is not None:
        lines += [
            "  resona:",
            f"    layers: [{layer}]",
            "    chunk_size: 2      # one key-value pair per chunk",
            "    top_k: 1",
            "    encoder: lexical   # hashed token ids: the key query finds its pair's chunk",
            "    lexical_ngram: 1",
            "    lexical_dim: 1048576  # sparse search: the size costs nothing",
            "    num_heads: 1",
        ]
    steps = 4000
    batch = 64
    lines += [
        "data:",
        "  source: mqar",
        f"  seq_len: {T}",
        "  shuffle: false       # Zoology reads its examples in order",
        "  mqar:",
        f"    num_kv_pairs: {kv}",
        "    train_examples: 100000",
        "    test_examples: 1000",
        "    seed: 123",
        "optimizer:",
        "  lr: 0.003",
        "  weight_decay: 0.1",
        "  grad_clip: 0         # Zoology: no clipping",
        "schedule:",
        "  name: cosine",
        "  warmup_ratio: 0.02",
        "  min_lr_ratio: 0.0",
        "train:",
        f"  steps: {steps}",
        f"  batch_size: {batch}",
        "  log_every: 100",
        f"  run_dir: runs/mqar/{backbone}/{variant}/d{d}_T{T}",
        "checkpoint:",
        "  every: 1000",
        "  keep_last: 1",
        "eval:",
        "  every: 500",
        "  batches: 0",
    ]
    return "\n".join(lines) + "\n"


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "mqar")
    root = os.path.normpath(root)
    if os.path.isdir(root):
        shutil.rmtree(root)
    n = 0
    for backbone in BACKBONES:
        for variant, layer in VARIANTS.items():
            os.makedirs(os.path.join(root, backbone, variant))
            for d in D_MODELS:
                for T, kv in LENGTHS:
                    path = f"{backbone}/{variant}/d{d}_T{T}.yaml"
                    text = "without Resona" if layer is None else (
                        f"Resona at layer {layer} (chunk 2, top-1)")
                    with open(os.path.join(root, path), "w") as f:
                        f.write(HEADER.format(backbone=backbone, d=d, T=T, kv=kv,
                                              variant_text=text, path=path))
                        f.write(body(backbone, variant, d, T, kv))
                    n += 1
    print(f"wrote {n} configs under {root}")


if __name__ == "__main__":
    main()
