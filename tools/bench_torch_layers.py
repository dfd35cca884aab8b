#!/usr/bin/env python3
"""PyTorch twin of cuda/bench/layer_bench.cc: the same GLA and DeltaNet layers (FLA's
GatedLinearAttention and DeltaNet at the paper's shape: hidden 600, 4 heads, GLA keys
75 / values 150, DeltaNet 150 / 150) and their pre-norm blocks (RMSNorm, SwiGLU MLP of
1792), timed the same way (warm-up, median of 5 repeats of back-to-back calls, CUDA
events), fwd under no_grad and fwd+bwd by torch.autograd.grad to the input and every
parameter, float32 (TF32 matmuls, as our float32 matmul) and bf16 (parameters and
activations bf16, recurrences in float32 inside the chunk functions).

The chunked recurrences are tools/bench_torch.py's (gla_ref, delta_rule_ref: chunks of 64,
batched matmuls per chunk, a Python loop over the chunks for the state), i.e. eager
PyTorch without custom kernels. When flash-linear-attention (`fla`) is importable, its
Triton chunk kernels (fla.ops.gla.chunk_gla, fla.ops.delta_rule.chunk_delta_rule) are timed
in the same layers as a second PyTorch row ("torch+fla").

    python3 tools/bench_torch_layers.py [--batch 8] [--seq 2048] [--csv PATH]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import delta_rule_ref, gla_ref, time_ms  # noqa: E402

HIDDEN, HEADS, EPS = 600, 4, 1e-6
MLP = 1792  # int(600 * 4 * 2/3) rounded up to a multiple of 256


def rms_norm(x, w):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS).to(x.dtype) * w


def linear(d_in, d_out, bias=False):
    return torch.nn.Linear(d_in, d_out, bias=bias)


class GLA(torch.nn.Module):
    """FLA's GatedLinearAttention with its defaults (expand_k 0.5, expand_v 1, low-rank
    forget gate 16 with normaliser 16, swish output gate, no short conv)."""

    def __init__(self, fla_kernel=None):
        super().__init__()
        K, V = HIDDEN // 2, HIDDEN
        self.q_proj, self.k_proj, self.v_proj = linear(HIDDEN, K), linear(HIDDEN, K), linear(HIDDEN, V)
        self.g_proj = linear(HIDDEN, V)
        self.gk_proj = torch.nn.Sequential(linear(HIDDEN, 16), linear(16, K, bias=True))
        self.o_proj = linear(V, HIDDEN)
        self.g_norm = torch.nn.Parameter(torch.ones(V // HEADS))
        self.fla = fla_kernel

    def forward(self, x):
        B, T, _ = x.shape
        h = lambda t: t.reshape(B, T, HEADS, -1)  # noqa: E731
        q, k, v = h(self.q_proj(x)), h(self.k_proj(x)), h(self.v_proj(x))
        g = F.logsigmoid(h(self.gk_proj(x)).float()) / 16
        if self.fla is None:
            o = gla_ref(q, k, v, g)
        else:
            o, _ = self.fla(q, k, v, g.to(q.dtype))
        o = rms_norm(o, self.g_norm) * F.silu(h(self.g_proj(x)))
        return self.o_proj(o.reshape(B, T, -1))


def short_conv(x, w):
    # Causal depthwise conv (FLA's ShortConvolution), x [B, T, D], w [D, 1, W], then SiLU.
    y = F.conv1d(x.transpose(1, 2), w, padding=w.shape[-1] - 1, groups=x.shape[-1])
    return F.silu(y[..., :x.shape[1]].transpose(1, 2))


class DeltaNet(torch.nn.Module):
    """FLA's DeltaNet with its defaults (expand 1, short conv 4 with SiLU, l2-normalised
    q and k, beta = sigmoid(b_proj x), per-head RMSNorm, no output gate)."""

    def __init__(self, fla_kernel=None):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (linear(HIDDEN, HIDDEN) for _ in range(3))
        self.b_proj = linear(HIDDEN, HEADS)
        self.convs = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(HIDDEN, 1, 4) * 0.5) for _ in range(3)])
        self.o_proj = linear(HIDDEN, HIDDEN)
        self.o_norm = torch.nn.Parameter(torch.ones(HIDDEN // HEADS))
        self.fla = fla_kernel

    def forward(self, x):
        B, T, _ = x.shape
        h = lambda t: t.reshape(B, T, HEADS, -1)  # noqa: E731
        q, k, v = (h(short_conv(p(x), w)) for p, w in
                   zip((self.q_proj, self.k_proj, self.v_proj), self.convs))
        q = q * torch.rsqrt(q.float().pow(2).sum(-1, keepdim=True) + 1e-6).to(q.dtype)
        k = k * torch.rsqrt(k.float().pow(2).sum(-1, keepdim=True) + 1e-6).to(k.dtype)
        beta = torch.sigmoid(self.b_proj(x))
        if self.fla is None:
            o = delta_rule_ref(q, k, v, beta)
        else:
            o, _ = self.fla(q, k, v, beta)
        o = rms_norm(o, self.o_norm)
        return self.o_proj(o.reshape(B, T, -1))


class Block(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn_norm = torch.nn.Parameter(torch.ones(HIDDEN))
        self.attn = attn
        self.mlp_norm = torch.nn.Parameter(torch.ones(HIDDEN))
        self.gate_proj, self.up_proj = linear(HIDDEN, MLP), linear(HIDDEN, MLP)
        self.down_proj = linear(MLP, HIDDEN)

    def forward(self, x):
        x = x + self.attn(rms_norm(x, self.attn_norm))
        y = rms_norm(x, self.mlp_norm)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


def fla_kernels():
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gla import chunk_gla
    except Exception as e:  # not installed, or no Triton for this card
        print(f"flash-linear-attention not available ({type(e).__name__}: {e}); "
              "timing the eager chunked references only", file=sys.stderr)
        return None
    return {"gla": chunk_gla, "deltanet": lambda q, k, v, b: chunk_delta_rule(q, k, v, b)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--csv")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(20261127)
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"shape: batch {args.batch} x {args.seq} tokens\n")
    fla = fla_kernels()
    impls = [("torch", None)] + ([("torch+fla", fla)] if fla else [])
    rows = []
    tokens = args.batch * args.seq
    for backbone, cls in (("gla", GLA), ("deltanet", DeltaNet)):
        for impl, kernels in impls:
            for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
                for unit in ("attn", "block"):
                    attn = cls(kernels[backbone] if kernels else None)
                    m = (attn if unit == "attn" else Block(attn)).to(dev, dt)
                    x = torch.randn(args.batch, args.seq, HIDDEN, device=dev, dtype=dt,
                                    requires_grad=True)
                    d_out = torch.randn_like(x)
                    inputs = [x] + list(m.parameters())
                    params = sum(p.numel() for p in m.parameters())

                    def fwd():
                        with torch.no_grad():
                            m(x)

                    def fwd_bwd():
                        torch.autograd.grad(m(x), inputs, d_out)

                    for pas, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                        ms = time_ms(fn, repeat_ms=50.0, max_calls=50)  # as layer_bench
                        rows.append((backbone, unit, params, impl, name, pas, ms, tokens / ms * 1e3))
                    del m, attn, x, d_out, inputs
                    torch.cuda.empty_cache()
    print("| backbone | unit | parameters | impl | dtype | pass | ms | tokens/s |")
    print("|---|---|---:|---|---|---|---:|---:|")
    for r in rows:
        print("| %s | %s | %d | %s | %s | %s | %.3f | %.0f |" % r)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("backbone,unit,parameters,impl,dtype,pass,ms,tokens_per_s\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")


if __name__ == "__main__":
    main()
