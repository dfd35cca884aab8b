#!/usr/bin/env python3
"""PyTorch twin of //cuda/bench:ops_bench: the same ops, sizes, timing method and columns.

References are torch.nn.functional where it has the op; the recurrences are plain chunked
PyTorch implementations written here (chunk length 64, a Python loop over chunks for the
state recurrence, autograd for the backward), computing in float32 whatever the input
dtype (TF32 tensor cores for the products) and casting the output back.

Timing: one warm-up call, then the median over 5 repeats of the mean time of n calls timed
with CUDA events, n chosen so a repeat takes ~25 ms (at most 200 calls). A forward runs
under torch.no_grad(); forward+backward runs torch.autograd.grad of the output w.r.t. the
inputs with a fixed random d_out (no .grad buffers). Ideal bytes and FLOPs are the same
formulas as ops_bench.cc (see the comments there).

Usage: python3 tools/bench_torch.py --csv torch.csv [--only rms_norm,layer_norm] > torch.md
"""

import argparse
import csv
import math
import sys

import torch
import torch.nn.functional as F

REPEATS = 5
REPEAT_MS = 25.0
MAX_CALLS = 200
CHUNK = 64

# Our float32 matmul runs on TF32 tensor cores; let PyTorch do the same.
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

DEV = "cuda"
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def time_ms(fn, repeat_ms=None, max_calls=None):
    """Milliseconds per call of fn, timed as cuda/bench/timing.h times ours."""
    repeat_ms = REPEAT_MS if repeat_ms is None else repeat_ms
    max_calls = MAX_CALLS if max_calls is None else max_calls
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)

    def timed(n):
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / n

    fn()  # warm-up
    once = max(timed(1), 1e-3)
    n = min(max(int(repeat_ms / once), 1), max_calls)
    reps = sorted(timed(n) for _ in range(REPEATS))
    return reps[REPEATS // 2]


def rand(shape, dtype, lo=-1.0, hi=1.0, grad=False):
    t = (torch.rand(shape, device=DEV, dtype=torch.float32) * (hi - lo) + lo).to(dtype)
    return t.requires_grad_(grad)


def rand_ids(n, vocab):
    return torch.randint(0, vocab, (n,), device=DEV, dtype=torch.int64)


# ---- ceilings ----


def measure_ceilings():
    n = 1 << 28
    src = rand((n,), torch.float32)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    copy = 2.0 * n * 4 / (ms * 1e-3) / 1e9
    del src, dst
    gemm = {}
    m = 8192
    for dt in (torch.bfloat16, torch.float32):
        a, b = rand((m, m), dt), rand((m, m), dt)
        ms = time_ms(lambda: torch.matmul(a, b))
        gemm[dt] = 2.0 * m**3 / (ms * 1e-3) / 1e12
    return copy, gemm


class Table:
    def __init__(self, copy, gemm):
        self.copy, self.gemm, self.rows = copy, gemm, []

    only = []  # ops to time (--only); empty: all

    def add(self, op, shape, dt, pas, nbytes, flops, tensor_core, fn):
        if self.only and op not in self.only:
            return
        try:
            ms = time_ms(fn)
        except Exception as e:  # a case PyTorch refuses (e.g. a dtype) is reported, not fatal
            print(f"skipped {op} {shape} {NAMES[dt]} {pas}: {e}", file=sys.stderr)
            return
        floor = nbytes / (self.copy * 1e9) * 1e3
        if tensor_core:
            floor = max(floor, flops / (self.gemm[dt] * 1e12) * 1e3)
        self.rows.append((op, shape, NAMES[dt], pas, ms, nbytes, flops, floor, self.gemm[dt]))
        print(f"{op:16s} {shape:24s} {NAMES[dt]:5s} {pas:8s} {ms:9.4f} ms", file=sys.stderr)

    def print_markdown(self):
        g = self.gemm
        print(f"Ceilings: copy {self.copy:.1f} GB/s, torch.matmul bf16 "
              f"{g[torch.bfloat16]:.1f} TFLOP/s, TF32 {g[torch.float32]:.1f} TFLOP/s\n")
        print("| op | shape | dtype | pass | ms | GB/s | % copy | TFLOP/s | % gemm | floor ms "
              "| x floor |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for op, shape, dt, pas, ms, nbytes, flops, floor, peak in self.rows:
            gbps = nbytes / (ms * 1e-3) / 1e9
            tfl = flops / (ms * 1e-3) / 1e12
            fl = f"{tfl:.2f} | {100 * tfl / peak:.1f}" if flops > 0 else "- | -"
            print(f"| {op} | {shape} | {dt} | {pas} | {ms:.4f} | {gbps:.1f} | "
                  f"{100 * gbps / self.copy:.1f} | {fl} | {floor:.4f} | {ms / floor:.2f} |")

    def write_csv(self, path):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["op", "shape", "dtype", "pass", "ms", "gbps", "pct_copy", "tflops",
                        "pct_gemm", "floor_ms", "x_floor", "bytes", "flops"])
            w.writerow(["ceiling_copy", "1 GiB", "f32", "copy", "", self.copy, 100, "", "", "",
                        "", "", ""])
            for dt in (torch.bfloat16, torch.float32):
                w.writerow(["ceiling_gemm", "8192^3", NAMES[dt], "gemm", "", "", "",
                            self.gemm[dt], 100, "", "", "", ""])
            for op, shape, dt, pas, ms, nbytes, flops, floor, peak in self.rows:
                gbps = nbytes / (ms * 1e-3) / 1e9
                tfl = flops / (ms * 1e-3) / 1e12
                w.writerow([op, shape, dt, pas, ms, gbps, 100 * gbps / self.copy,
                            tfl if flops > 0 else "", 100 * tfl / peak if flops > 0 else "",
                            floor, ms / floor, nbytes, flops])


def fwd_and_bwd(t, op, shape, dt, fwd_bytes, fwd_flops, all_bytes, all_flops, tensor_core,
                inputs, fwd):
    def f():
        with torch.no_grad():
            fwd()

    t.add(op, shape, dt, "fwd", fwd_bytes, fwd_flops, tensor_core, f)
    d_out = []

    def fb():
        out = fwd()
        if not d_out:
            d_out.append(torch.ones_like(out) if out.numel() == 1 else
                         rand(out.shape, out.dtype))
        torch.autograd.grad(out, inputs, d_out[0])

    t.add(op, shape, dt, "fwd+bwd", all_bytes, all_flops, tensor_core, fb)


def dims(*d):
    return "[" + ", ".join(str(v) for v in d) + "]"


# ---- chunked references for the recurrences ----


def linear_scan_ref(a, b):
    """h_t = a_t h_{t-1} + b_t over dim 1 of [B, T, D], a in (0, 1].

    Within a chunk, with L_t = sum_{s<=t} log a_s: h_t = e^{L_t} (h_in + sum_{s<=t} e^{-L_s}
    b_s); e^{-L} stays bounded for a chunk of 64 steps at the decays used here.
    """
    dt = a.dtype
    a, b = a.float(), b.float()
    B, T, D = a.shape
    h = a.new_zeros(B, D)
    outs = []
    for i in range(0, T, CHUNK):
        L = torch.cumsum(torch.log(a[:, i:i + CHUNK]), 1)
        hs = torch.exp(L) * (h[:, None] + torch.cumsum(b[:, i:i + CHUNK] * torch.exp(-L), 1))
        outs.append(hs)
        h = hs[:, -1]
    return torch.cat(outs, 1).to(dt)


def selective_scan_ref(x, delta, A, Bm, Cm, D_skip):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t;  y_t = C_t . h_t + D_skip x_t.

    x, delta [B, T, D], A [D, N], B, C [B, T, N]; the state h [B, D, N]. Each chunk uses the
    same cumulative-log form as linear_scan_ref on [B, C, D, N].
    """
    dt = x.dtype
    x, delta, A, Bm, Cm, D_skip = (t.float() for t in (x, delta, A, Bm, Cm, D_skip))
    Bsz, T, D = x.shape
    h = x.new_zeros(Bsz, D, A.shape[1])
    ys = []
    for i in range(0, T, CHUNK):
        dl = delta[:, i:i + CHUNK]
        L = torch.cumsum(dl[..., None] * A, 1)  # [B, C, D, N], <= 0
        u = (dl * x[:, i:i + CHUNK])[..., None] * Bm[:, i:i + CHUNK, None, :]
        hs = torch.exp(L) * (h[:, None] + torch.cumsum(u * torch.exp(-L), 1))
        ys.append((hs * Cm[:, i:i + CHUNK, None, :]).sum(-1))
        h = hs[:, -1]
    y = torch.cat(ys, 1) + x * D_skip
    return y.to(dt)


def to_chunks(t, n):
    """[B, T, H, X] -> [B, H, n, C, X] (float32)."""
    B, T, H = t.shape[:3]
    return t.float().transpose(1, 2).reshape(B, H, n, T // n, -1)


def gla_ref(q, k, v, g):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T;  o_t = K^-1/2 S_t^T q_t, chunked.

    Within a chunk with G the cumulative log decay: intra-chunk o = tril((q e^G)(k e^-G)^T) v;
    the incoming state adds (q e^G) S; the state leaves as e^{G_last} S + (k e^{G_last-G})^T v.
    """
    dt = q.dtype
    B, T, H, K = q.shape
    n = T // CHUNK
    scale = K**-0.5
    q, k, v, g = (to_chunks(t, n) for t in (q, k, v, g))
    G = torch.cumsum(g, 3)
    qe = q * torch.exp(G) * scale
    ke = k * torch.exp(-G)
    mask = torch.ones(CHUNK, CHUNK, device=q.device, dtype=torch.bool).tril()
    A = (qe @ ke.transpose(-1, -2)).masked_fill(~mask, 0)
    o_intra = A @ v
    G_last = G[:, :, :, -1:]
    kd = k * torch.exp(G_last - G)
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for i in range(n):
        outs.append(o_intra[:, :, i] + qe[:, :, i] @ S)
        S = S * torch.exp(G_last[:, :, i, 0])[..., None] + kd[:, :, i].transpose(-1, -2) @ v[:, :, i]
    o = torch.stack(outs, 2).reshape(B, H, T, -1).transpose(1, 2)
    return o.to(dt)


def delta_rule_ref(q, k, v, beta):
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T;  o_t = K^-1/2 S_t^T q_t.

    WY form per chunk: with L = strict_lower(diag(beta) K K^T) and T = (I + L)^-1,
    W = T diag(beta) K and U0 = T diag(beta) V (independent of the state, all chunks at
    once); then for each chunk in turn U = U0 - W S, o = scale (Q S + tril(Q K^T) U),
    S <- S + K^T U.
    """
    dt = q.dtype
    B, T, H, K = q.shape
    n = T // CHUNK
    scale = K**-0.5
    q, k, v = (to_chunks(t, n) for t in (q, k, v))
    beta = beta.float().transpose(1, 2).reshape(B, H, n, CHUNK, 1)
    eye = torch.eye(CHUNK, device=q.device)
    strict = torch.ones(CHUNK, CHUNK, device=q.device, dtype=torch.bool).tril(-1)
    incl = torch.ones(CHUNK, CHUNK, device=q.device, dtype=torch.bool).tril()
    L = ((beta * k) @ k.transpose(-1, -2)).masked_fill(~strict, 0)
    rhs = torch.cat([beta * k, beta * v], -1)
    WU = torch.linalg.solve_triangular(eye + L, rhs, upper=False, unitriangular=True)
    W, U0 = WU[..., :K], WU[..., K:]
    Aqk = (q @ k.transpose(-1, -2)).masked_fill(~incl, 0)
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for i in range(n):
        U = U0[:, :, i] - W[:, :, i] @ S
        outs.append(scale * (q[:, :, i] @ S + Aqk[:, :, i] @ U))
        S = S + k[:, :, i].transpose(-1, -2) @ U
    o = torch.stack(outs, 2).reshape(B, H, T, -1).transpose(1, 2)
    return o.to(dt)


# ---- the cases (sizes, bytes and FLOPs as in ops_bench.cc) ----


def bench_elementwise(t, dt):
    n = 1 << 26
    ns = n * torch.finfo(dt).bits // 8
    shape = dims(n)
    a, b = rand((n,), dt, grad=True), rand((n,), dt, grad=True)
    fwd_and_bwd(t, "add", shape, dt, 3 * ns, 0, 3 * ns, 0, False, [a, b], lambda: a + b)
    fwd_and_bwd(t, "mul", shape, dt, 3 * ns, 0, 8 * ns, 0, False, [a, b], lambda: a * b)
    fwd_and_bwd(t, "silu", shape, dt, 2 * ns, 0, 5 * ns, 0, False, [a], lambda: F.silu(a))


def bench_reductions(t, dt):
    rows, d = 16384, 4096
    s = torch.finfo(dt).bits // 8
    xs, rs = rows * d * s, rows * s
    shape = dims(rows, d)
    x = rand((rows, d), dt, grad=True)
    fwd_and_bwd(t, "sum", shape, dt, xs + rs, 0, 2 * (xs + rs), 0, False, [x],
                lambda: x.sum(-1))
    fwd_and_bwd(t, "mean", shape, dt, xs + rs, 0, 2 * (xs + rs), 0, False, [x],
                lambda: x.mean(-1))
    fwd_and_bwd(t, "softmax", shape, dt, 2 * xs, 0, 5 * xs, 0, False, [x],
                lambda: F.softmax(x, -1))


def bench_norms(t, dt):
    for rows, d in ((16384, 4096), (16384, 600), (131072, 600)):
        s = torch.finfo(dt).bits // 8
        xs, stats = rows * d * s, rows * 4.0
        shape = dims(rows, d)
        x = rand((rows, d), dt, grad=True)
        w, bias = rand((d,), dt, 0.5, 1.5, grad=True), rand((d,), dt, grad=True)
        fwd_and_bwd(t, "rms_norm", shape, dt, 2 * xs + stats, 0, 5 * xs + 2 * stats, 0, False,
                    [x, w], lambda: F.rms_norm(x, (d,), w, 1e-6))
        fwd_and_bwd(t, "layer_norm", shape, dt, 2 * xs + 2 * stats, 0, 5 * xs + 4 * stats, 0,
                    False, [x, w, bias], lambda: F.layer_norm(x, (d,), w, bias, 1e-5))


def bench_cross_entropy(t, dt):
    n, v = 16384, 32000
    ls = n * v * (torch.finfo(dt).bits // 8)
    logits = rand((n, v), dt, -4.0, 4.0, grad=True)
    targets = rand_ids(n, v)
    fwd_and_bwd(t, "cross_entropy", dims(n, v), dt, ls + n * 8.0, 0, 3 * ls + n * 16.0, 0,
                False, [logits], lambda: F.cross_entropy(logits, targets))


def bench_embedding(t, dt):
    # x 16384 ids: the paper's batch; x 131072 ids: enough positions to fill the card.
    vocab, d = 32000, 600
    for n in (16384, 131072):
        s = torch.finfo(dt).bits // 8
        w = rand((vocab, d), dt, grad=True)
        ids = rand_ids(n, vocab)
        fwd = n * 8.0 + 2.0 * n * d * s
        bwd = n * 8.0 + n * d * s + vocab * d * s
        fwd_and_bwd(t, "embedding", dims(vocab, d) + f" x {n}", dt, fwd, 0, fwd + bwd, 0, False,
                    [w], lambda: F.embedding(ids, w))


def bench_conv(t, dt):
    # B = 8: the paper's batch (x fits in L2); B = 64: 131072 tokens, enough to fill the
    # card (629 MB of float32 x).
    length, d, width = 2048, 1200, 4
    for b in (8, 64):
        xs = b * length * d * (torch.finfo(dt).bits // 8)
        # cuDNN's layout: x [B, D, T] (channels first), depthwise weight [D, 1, W], padded
        # on the left by W - 1 (both sides, then the tail cut off), so y_t sees
        # x_{t-W+1..t}.
        x = rand((b, d, length), dt, grad=True)
        w, bias = rand((d, 1, width), dt, grad=True), rand((d,), dt, grad=True)
        fwd_and_bwd(t, "causal_conv1d", dims(b, length, d) + " W=4", dt, 2 * xs, 0, 5 * xs, 0,
                    False, [x, w, bias],
                    lambda: F.conv1d(x, w, bias, padding=width - 1, groups=d)[..., :length])


def bench_matmul(t, dt):
    m, k, n = 16384, 600, 1792
    s = torch.finfo(dt).bits // 8
    io = (m * k + k * n + m * n) * s
    flops = 2.0 * m * k * n
    a, b = rand((m, k), dt, grad=True), rand((k, n), dt, grad=True)
    fwd_and_bwd(t, "matmul", dims(m, k) + " x " + dims(k, n), dt, io, flops, 3 * io, 3 * flops,
                True, [a, b], lambda: a @ b)


def bench_adamw(t):
    count, rows, cols = 16, 2048, 4000
    params = []
    for _ in range(count):
        p = torch.nn.Parameter(rand((rows, cols), torch.float32))
        p.grad = rand((rows, cols), torch.float32)
        params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    n = count * rows * cols
    t.add("adamw", dims(n), torch.float32, "step", 28.0 * n, 0, False, opt.step)


def bench_linear_scan(t, dt):
    b, length, d = 8, 2048, 1200
    n = b * length * d
    ns = n * (torch.finfo(dt).bits // 8)
    a, x = rand((b, length, d), dt, 0.9, 1.0, grad=True), rand((b, length, d), dt, grad=True)
    fwd_and_bwd(t, "linear_scan", dims(b, length, d), dt, 3 * ns, 2 * n, 8 * ns, 6 * n, False,
                [a, x], lambda: linear_scan_ref(a, x))


def bench_selective_scan(t, dt):
    b, length, d, n = 8, 2048, 1200, 16
    s = torch.finfo(dt).bits // 8
    btd, btn = b * length * d, b * length * n
    x, delta = rand((b, length, d), dt, grad=True), rand((b, length, d), dt, 0.01, 0.1, grad=True)
    A = rand((d, n), dt, -1.0, -0.1, grad=True)
    Bm, Cm = rand((b, length, n), dt, grad=True), rand((b, length, n), dt, grad=True)
    D_skip = rand((d,), dt, grad=True)
    fwd = (3 * btd + 2 * btn) * s + b * d * n * 4.0
    bwd = (5 * btd + 4 * btn) * s
    flops = 7.0 * btd * n
    fwd_and_bwd(t, "selective_scan", dims(b, length, d) + " N=16", dt, fwd, flops, fwd + bwd,
                3 * flops, False, [x, delta, A, Bm, Cm, D_skip],
                lambda: selective_scan_ref(x, delta, A, Bm, Cm, D_skip))


def bench_gla(t, dt):
    b, length, h, k, v = 8, 2048, 4, 75, 150
    s = torch.finfo(dt).bits // 8
    btk, btv = b * length * h * k, b * length * h * v
    q, kk = rand((b, length, h, k), dt, grad=True), rand((b, length, h, k), dt, grad=True)
    vv = rand((b, length, h, v), dt, grad=True)
    g = rand((b, length, h, k), dt, -0.1, -0.001, grad=True)
    per_chunk = 2 * CHUNK * CHUNK * (k + v) + 4 * CHUNK * k * v
    flops = per_chunk * b * h * (length / CHUNK)
    fwd = (3 * btk + 2 * btv) * s + b * h * k * v * 4.0
    bwd = (6 * btk + 3 * btv) * s
    fwd_and_bwd(t, "gla", "B=8 T=2048 H=4 K=75 V=150", dt, fwd, flops, fwd + bwd, 3 * flops, True,
                [q, kk, vv, g], lambda: gla_ref(q, kk, vv, g))


def bench_delta_rule(t, dt):
    b, length, h, k, v = 8, 2048, 4, 150, 150
    s = torch.finfo(dt).bits // 8
    btk, btv, bth = b * length * h * k, b * length * h * v, b * length * h
    ka = math.sqrt(3.0 / k)
    q, kk = rand((b, length, h, k), dt, grad=True), rand((b, length, h, k), dt, -ka, ka, grad=True)
    vv = rand((b, length, h, v), dt, grad=True)
    beta = rand((b, length, h), dt, 0.05, 0.95, grad=True)
    per_chunk = (4 * CHUNK * CHUNK * k + CHUNK * CHUNK * (k + v) + 2 * CHUNK * CHUNK * v +
                 6 * CHUNK * k * v)
    flops = per_chunk * b * h * (length / CHUNK)
    fwd = (2 * btk + 2 * btv + bth) * s + b * h * k * v * 4.0
    bwd = (4 * btk + 3 * btv + 2 * bth) * s
    fwd_and_bwd(t, "delta_rule", "B=8 T=2048 H=4 K=V=150", dt, fwd, flops, fwd + bwd, 3 * flops,
                True, [q, kk, vv, beta], lambda: delta_rule_ref(q, kk, vv, beta))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="write the table as CSV here too")
    ap.add_argument("--only", default="", help="comma-separated ops to time (default: all)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_torch: no CUDA device")
    torch.manual_seed(20261127)
    p = torch.cuda.get_device_properties(0)
    print(f"Device: {p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**20:.0f} MiB), "
          f"torch {torch.__version__}\n")
    copy, gemm = measure_ceilings()
    t = Table(copy, gemm)
    t.only = [o for o in args.only.split(",") if o]
    for dt in (torch.float32, torch.bfloat16):
        for bench in (bench_elementwise, bench_reductions, bench_norms, bench_cross_entropy,
                      bench_embedding, bench_conv, bench_matmul, bench_linear_scan,
                      bench_selective_scan, bench_gla, bench_delta_rule):
            bench(t, dt)
            torch.cuda.empty_cache()
    bench_adamw(t)
    t.print_markdown()
    if args.csv:
        t.write_csv(args.csv)


if __name__ == "__main__":
    main()
