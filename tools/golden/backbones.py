#!/usr/bin/env python3
"""Golden reference of the FLA backbones (GLA, DeltaNet, RetNet, Mamba, Mamba2) in PyTorch.

Reads tests/golden/<name>.inputs.safetensors (written by our C++: the model's float32
weights under their dotted names, input_ids and labels [B, T] int64, the resolved model
config as JSON in the metadata), runs the model in float64 on the CPU as FLA defines it,
and writes <name>.expected.safetensors: "logits" [B, T, vocab], "loss" [1] and
"grad.<parameter>" for every parameter, the gradient of the mean cross-entropy of the
logits against the labels (-100 ignored), all rounded once to float32.

The recurrences are the sequential step-by-step forms (FLA's naive_recurrent_gla,
delta_rule_recurrence, the retention recurrence, Mamba's slow_forward / selective_scan_ref,
Mamba2's single-step update), one time step at a time, so that nothing here shares the
chunked algorithms of the C++ side. Gradients come from PyTorch's autograd.

Regenerate the golden data (from the repository root):
  1. the inputs, with our C++ (any machine; the same bytes every time):
       RESONA_GOLDEN_WRITE=$PWD/tests/golden bazel run //tests:models_test -- \\
         -tc='golden: write the inputs*'
  2. the expected outputs, where PyTorch is installed (CPU is enough; --cross-check also
     compares Mamba and Mamba2 with transformers' models, for information):
       python3 tools/golden/backbones.py tests/golden --out tests/golden
  3. check:
       bazel test //tests:models_test
The safetensors reader and writer below need only the standard library:
  python3 tools/golden/backbones.py --self-test [tests/golden]
checks them (and, given the folder, that reading and rewriting each C++ inputs file gives
the same bytes) without PyTorch.
"""

import argparse
import glob
import json
import math
import os
import struct
import sys
import traceback

# ---- safetensors (https://github.com/huggingface/safetensors), standard library only ----
#
#   [8 bytes]  N, the header length, unsigned little-endian
#   [N bytes]  JSON: {"__metadata__": {str: str}, name: {"dtype", "shape",
#              "data_offsets": [begin, end]}, ...}, padded with spaces to 8 + N = 0 mod 8
#   [rest]     the tensors' bytes, row-major little-endian, at [begin, end) of this section

ELEMENT_SIZE = {"F32": 4, "F64": 8, "I32": 4, "I64": 8, "BF16": 2}


def read_safetensors(path):
    """Returns (metadata dict, {name: (dtype, shape list, bytes)}) with the tensors in the
    order of their data (for the files our C++ writes, the model's parameter order),
    everything checked."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end ({len(data)} bytes)")
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{path}: a name appears twice in the header")
        return dict(pairs)

    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors, spans = {}, []
    for name, e in header.items():
        dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dtype not in ELEMENT_SIZE:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype!r}")
        if not isinstance(shape, list) or any(not isinstance(d, int) or d < 0 for d in shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * ELEMENT_SIZE[dtype]
        if end - begin != nbytes or begin < 0 or base + end > len(data):
            raise ValueError(f"{path}: tensor {name!r} data_offsets {offsets} do not fit "
                             f"shape {shape} of {dtype} ({nbytes} bytes) in the file")
        spans.append((begin, end, name, (dtype, list(shape), data[base + begin:base + end])))
    spans.sort(key=lambda s: (s[0], s[1]))
    at = 0
    for begin, end, name, entry in spans:
        if begin != at:
            raise ValueError(f"{path}: the tensors' data leave a gap or overlap at byte {at}")
        at = end
        tensors[name] = entry
    if base + at != len(data):
        raise ValueError(f"{path}: {len(data) - base - at} bytes after the last tensor")
    return metadata, tensors


def serialize_safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes) in the order their data is stored.
    The header is laid out as our C++ writes it (metadata first with its keys sorted, then
    the tensors in order, no spaces), so that a file read and written again keeps its
    bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    at = 0
    for name, dtype, shape, raw in tensors:
        if name in header:
            raise ValueError(f"tensor name {name!r} appears twice (or is __metadata__)")
        if len(raw) != math.prod(shape) * ELEMENT_SIZE[dtype]:
            raise ValueError(f"tensor {name!r}: {len(raw)} bytes for shape {shape} of {dtype}")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(raw)]}
        at += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    text = text.encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def write_safetensors(path, tensors, metadata=None):
    blob = serialize_safetensors(tensors, metadata)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def self_test(folder):
    """Checks the reader and writer without PyTorch."""
    f32 = struct.pack("<3f", 1.0, -2.5, 3.25)
    i64 = struct.pack("<2q", -100, 7)
    blob = serialize_safetensors([("b", "F32", [3], f32), ("a", "I64", [1, 2], i64)],
                                 {"k": "v"})
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0, "the data section must start 8-byte aligned"
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "golden_self_test.safetensors")
    with open(tmp, "wb") as f:
        f.write(blob)
    md, ts = read_safetensors(tmp)
    assert md == {"k": "v"}, md
    assert ts["b"] == ("F32", [3], f32) and ts["a"] == ("I64", [1, 2], i64), ts
    with open(tmp, "wb") as f:
        f.write(blob + b"\0")
    try:
        read_safetensors(tmp)
        raise AssertionError("a trailing byte was accepted")
    except ValueError:
        pass
    os.remove(tmp)
    checked = 0
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))) if folder else []:
        md, ts = read_safetensors(path)
        with open(path, "rb") as f:
            original = f.read()
        again = serialize_safetensors([(k, *v) for k, v in ts.items()], md)
        assert again == original, f"{path}: reading and writing again changed the bytes"
        checked += 1
    print(f"self-test passed ({checked} files read and rewritten byte for byte)")


# ---- tensors in and out (struct only: no numpy, no shared buffers) ----

STRUCT_CODE = {"F32": "f", "F64": "d", "I32": "i", "I64": "q"}


def to_torch(entry, torch):
    dtype, shape, raw = entry
    n = math.prod(shape)
    values = struct.unpack(f"<{n}{STRUCT_CODE[dtype]}", raw)
    torch_dtype = torch.int64 if dtype in ("I32", "I64") else torch.float64
    return torch.tensor(values, dtype=torch_dtype).reshape(shape)


def from_torch_f32(name, t, torch):
    """(name, "F32", shape, bytes): t rounded once to float32."""
    t = t.detach().to(torch.float32).contiguous()
    values = t.reshape(-1).tolist()
    return (name, "F32", list(t.shape), struct.pack(f"<{len(values)}f", *values))


# ---- the recurrences, one time step at a time ----

def gla_recurrence(q, k, v, log_alpha, scale, torch):
    """FLA's naive_recurrent_gla. q, k, log_alpha [B, T, H, K], v [B, T, H, V]; per head
    S [K, V]:  S_t = diag(exp(log_alpha_t)) S_{t-1} + k_t v_t^T,  o_t = (scale q_t)^T S_t."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        S = S * log_alpha[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1)


def delta_recurrence(q, k, v, beta, scale, torch):
    """FLA's delta_rule_recurrence. q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H]; per
    head S [K, V]:  v'_t = beta_t (v_t - S_{t-1}^T k_t),  S_t = S_{t-1} + k_t v'_t^T,
    o_t = (scale q_t)^T S_t."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        v_new = (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)) * beta[:, t, :, None]
        S = S + k[:, t, :, :, None] * v_new[:, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1)


def selective_scan(x, delta, A, Bm, Cm, D, torch):
    """Mamba's selective_scan_ref / slow_forward. x, delta [B, T, di], A [di, N],
    Bm, Cm [B, T, N], D [di]; per channel h [N]:
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t . h_t + D x_t."""
    Bsz, T, di = x.shape
    h = x.new_zeros(Bsz, di, A.shape[1])
    ys = []
    for t in range(T):
        h = (delta[:, t, :, None] * A).exp() * h + \
            (delta[:, t, :, None] * Bm[:, t, None, :]) * x[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1) + x * D


def ssd_recurrence(x, dt, A, Bh, Ch, D, torch):
    """Mamba2's SSM, per head (FLA's single-step update). x [B, T, H, P], dt [B, T, H],
    A [H], Bh, Ch [B, T, H, N], D [H]; per head h [P, N]:
    h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t^T,  y_t = h_t C_t + D x_t."""
    Bsz, T, H, P = x.shape
    h = x.new_zeros(Bsz, H, P, Bh.shape[-1])
    ys = []
    for t in range(T):
        h = (dt[:, t] * A).exp()[:, :, None, None] * h + \
            (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, 1) + x * D[:, None]


def check_recurrences(torch):
    """Each recurrence above against a closed form written differently (sums over s <= t
    of explicitly decayed terms, or the matrix-product form of the delta rule), float64,
    random inputs: a wrong index or transpose in the step forms would show here."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    B, T, H, K, V = 2, 6, 3, 4, 5
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    log_alpha = -torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    o = gla_recurrence(q, k, v, log_alpha, 0.7, torch)
    G = log_alpha.cumsum(1)
    ref = torch.zeros_like(o)
    for t in range(T):
        for s in range(t + 1):
            w = (0.7 * q[:, t] * k[:, s] * (G[:, t] - G[:, s]).exp()).sum(-1)  # [B, H]
            ref[:, t] += w[..., None] * v[:, s]
    assert torch.allclose(o, ref, atol=1e-12), "gla_recurrence"

    kn = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    o = delta_recurrence(q, kn, v, beta, 0.7, torch)
    # S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T with S [V, K], o_t = S_t q_t
    S = torch.zeros(B, H, V, K, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    for t in range(T):
        kt, bt = kn[:, t], beta[:, t, :, None, None]
        S = S @ (eye - bt * kt[..., :, None] * kt[..., None, :]) + \
            bt * v[:, t, :, :, None] * kt[..., None, :]
        assert torch.allclose(o[:, t], 0.7 * (S @ q[:, t, :, :, None])[..., 0], atol=1e-12), \
            "delta_recurrence"

    di, N = 5, 3
    x, delta = r(B, T, di), torch.rand(B, T, di, generator=g, dtype=torch.float64)
    A, D = -torch.rand(di, N, generator=g, dtype=torch.float64) * 2, r(di)
    Bm, Cm = r(B, T, N), r(B, T, N)
    y = selective_scan(x, delta, A, Bm, Cm, D, torch)
    ref = x * D
    for t in range(T):
        for s in range(t + 1):
            decay = (delta[:, s + 1:t + 1, :, None] * A).sum(1).exp()  # [B, di, N]
            ref[:, t] += (Cm[:, t, None, :] * decay * delta[:, s, :, None] * Bm[:, s, None, :]
                          ).sum(-1) * x[:, s]
    assert torch.allclose(y, ref, atol=1e-12), "selective_scan"

    P = 2
    x, dt = r(B, T, H, P), torch.rand(B, T, H, generator=g, dtype=torch.float64)
    A, D = -torch.rand(H, generator=g, dtype=torch.float64) * 2, r(H)
    Bh, Ch = r(B, T, H, N), r(B, T, H, N)
    y = ssd_recurrence(x, dt, A, Bh, Ch, D, torch)
    ref = x * D[:, None]
    for t in range(T):
        for s in range(t + 1):
            decay = (dt[:, s + 1:t + 1] * A).sum(1).exp()  # [B, H]
            cb = (Ch[:, t] * Bh[:, s]).sum(-1)  # [B, H]
            ref[:, t] += (decay * cb * dt[:, s])[..., None] * x[:, s]
    assert torch.allclose(y, ref, atol=1e-12), "ssd_recurrence"
    print("recurrences agree with their closed forms")


# ---- the models ----

def run_model(cfg, P, ids, torch):
    """logits [B, T, vocab] of the backbone cfg["name"] with parameters P (name -> tensor),
    as FLA's *ForCausalLM computes them."""
    F = torch.nn.functional
    name = cfg["name"]
    eps = cfg["norm_eps"]
    Bsz, T = ids.shape

    def rms_norm(x, w, e):
        # FLA's RMSNorm: x * rsqrt(mean(x^2) + eps) * w over the last dim.
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e) * w

    def linear(x, prefix, bias=False):
        return F.linear(x, P[prefix + ".weight"], P[prefix + ".bias"] if bias else None)

    def short_conv(x, prefix, bias, silu):
        # nn.Conv1d(D, D, W, groups=D, padding=W-1) over time, the first T outputs kept
        # (FLA's ShortConvolution, Mamba's conv1d): causal and depthwise. weight [D, 1, W].
        w = P[prefix + ".weight"]
        b = P[prefix + ".bias"] if bias else None
        y = F.conv1d(x.transpose(1, 2), w, b, padding=w.shape[-1] - 1, groups=x.shape[-1])
        y = y[..., :x.shape[1]].transpose(1, 2)
        return F.silu(y) if silu else y

    def gated_norm(o, g, w):
        # FLA's FusedRMSNormGated (norm, then the swish gate): rmsnorm(o) * w * g * sigmoid(g)
        return rms_norm(o, w, eps) * F.silu(g)

    def mlp(x, prefix):
        # GatedMLP (SwiGLU): down(silu(gate(x)) * up(x)), no biases.
        return linear(F.silu(linear(x, prefix + ".gate_proj")) * linear(x, prefix + ".up_proj"),
                      prefix + ".down_proj")

    def heads(x, n):
        # '... (h d) -> ... h d'
        return x.reshape(Bsz, T, n, x.shape[-1] // n)

    def output(o, x, pre, gated, gate_norm_name, norm_name):
        # The per-head norm (with the swish output gate when `gated`), then o_proj.
        H = o.shape[2]
        if gated:
            o = gated_norm(o, heads(linear(x, pre + "g_proj"), H), P[pre + gate_norm_name])
        else:
            o = rms_norm(o, P[pre + norm_name], eps)
        return linear(o.reshape(Bsz, T, -1), pre + "o_proj")

    # GLA (fla/layers/gla.py)
    def gla_attn(x, pre):
        c = cfg["gla"]
        H = c["num_heads"]
        q, k, v = (linear(x, pre + p) for p in ("q_proj", "k_proj", "v_proj"))
        if c["use_short_conv"]:
            q = short_conv(q, pre + "q_conv1d", c["conv_bias"], True)
            k = short_conv(k, pre + "k_conv1d", c["conv_bias"], True)
            v = short_conv(v, pre + "v_conv1d", c["conv_bias"], True)
        gk = linear(linear(x, pre + "gk_proj.0"), pre + "gk_proj.1", bias=True)
        q, k, v, gk = heads(q, H), heads(k, H), heads(v, H), heads(gk, H)
        log_alpha = F.logsigmoid(gk) / c["gate_logit_normalizer"]
        o = gla_recurrence(q, k, v, log_alpha, q.shape[-1] ** -0.5, torch)
        return output(o, x, pre, c["use_output_gate"], "g_norm_swish_gate.weight",
                      "g_norm.weight")

    # DeltaNet (fla/layers/delta_net.py)
    def deltanet_attn(x, pre):
        c = cfg["deltanet"]
        H = c["num_heads"]
        if c["qk_activation"] != "silu" or c["qk_norm"] != "l2" or not c["use_short_conv"]:
            raise NotImplementedError("deltanet: only qk_activation silu, qk_norm l2 and the "
                                      "short convolution are written here")
        q = short_conv(linear(x, pre + "q_proj"), pre + "q_conv1d", c["conv_bias"], True)
        k = short_conv(linear(x, pre + "k_proj"), pre + "k_conv1d", c["conv_bias"], True)
        v = short_conv(linear(x, pre + "v_proj"), pre + "v_conv1d", c["conv_bias"], True)
        q, k, v = heads(q, H), heads(k, H), heads(v, H)
        # use_qk_l2norm_in_kernel: x / sqrt(sum x^2 + 1e-6) per head (fla/modules/l2norm.py)
        q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
        beta = torch.sigmoid(linear(x, pre + "b_proj")) if c["use_beta"] else \
            q.new_ones(Bsz, T, H)
        if c["allow_neg_eigval"]:
            beta = beta * 2
        o = delta_recurrence(q, k, v, beta, q.shape[-1] ** -0.5, torch)
        return output(o, x, pre, c["use_gate"], "o_norm.weight", "o_norm.weight")

    # RetNet (fla/layers/multiscale_retention.py, fla/modules/rotary.py)
    def retnet_attn(x, pre):
        c = cfg["retnet"]
        H = c["num_heads"]
        q, k, v = (heads(linear(x, pre + p), H) for p in ("q_proj", "k_proj", "v_proj"))
        K = q.shape[-1]
        if K % 2:
            raise NotImplementedError("retnet: FLA's RotaryEmbedding needs an even head size")
        # RoPE, non-interleaved (GPT-NeoX): inv_freq_i = base^(-2i/K) for i < K/2; channels
        # (i, i + K/2) of position t rotated by the angle t * inv_freq_i. The angles are
        # FLA's: its RotaryEmbedding computes inv_freq, the positions and their product in
        # float32 (_compute_inv_freq, pos_idx_in_fp32); cos and sin of them in float64.
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, K, 2, dtype=torch.float32) / K))
        angle = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # [T, K/2]
        angle = angle.to(q.dtype)
        cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]

        def rope(t):
            t1, t2 = t[..., :K // 2], t[..., K // 2:]
            return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos], -1)

        q, k = rope(q), rope(k)
        # decay gamma_h = 1 - 2^(-5-h) per head: S_t = gamma_h S_{t-1} + k_t v_t^T
        gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(H, dtype=q.dtype))
        log_alpha = gamma.log()[None, None, :, None].expand(Bsz, T, H, K)
        o = gla_recurrence(q, k, v, log_alpha, K ** -0.5, torch)
        return output(o, x, pre, c["use_output_gate"], "g_norm_swish_gate.weight",
                      "g_norm.weight")

    # Mamba (fla/layers/mamba.py slow_forward)
    def mamba_mixer(x, pre):
        c = cfg["mamba"]
        xz = linear(x, pre + "in_proj", bias=c["use_bias"])
        di = xz.shape[-1] // 2
        xi, z = xz[..., :di], xz[..., di:]
        xi = short_conv(xi, pre + "conv1d", c["use_conv_bias"], True)
        N = P[pre + "A_log"].shape[1]
        r = P[pre + "dt_proj.weight"].shape[1]
        x_dbl = linear(xi, pre + "x_proj")
        dr, Bm, Cm = x_dbl[..., :r], x_dbl[..., r:r + N], x_dbl[..., r + N:]
        delta = F.softplus(linear(dr, pre + "dt_proj", bias=True))  # [B, T, di]
        A = -P[pre + "A_log"].exp()  # [di, N]
        y = selective_scan(xi, delta, A, Bm, Cm, P[pre + "D"], torch)
        return linear(y * F.silu(z), pre + "out_proj", bias=c["use_bias"])

    # Mamba2 (fla/layers/mamba2.py)
    def mamba2_mixer(x, pre):
        c = cfg["mamba2"]
        Pd, G, N = c["head_dim"], c["n_groups"], c["state_size"]
        di = c["expand"] * cfg["hidden_size"]
        H = di // Pd
        proj = linear(x, pre + "in_proj", bias=c["use_bias"])  # [z, xBC, dt]
        if proj.shape[-1] != 2 * di + 2 * G * N + H:
            raise ValueError(f"mamba2: in_proj gives {proj.shape[-1]} features")
        z, xBC, dt = proj[..., :di], proj[..., di:2 * di + 2 * G * N], proj[..., 2 * di + 2 * G * N:]
        xBC = short_conv(xBC, pre + "conv1d", c["use_conv_bias"], True)
        xs, Bm, Cm = xBC[..., :di], xBC[..., di:di + G * N], xBC[..., di + G * N:]
        dt = F.softplus(dt + P[pre + "dt_bias"])  # [B, T, H]; time_step_limit (0, inf)
        A = -P[pre + "A_log"].exp()  # [H]
        # Head h reads group h // (H/G), as mamba_ssm's kernels (FLA's CUDA path) and FLA's
        # single-step update expand the groups.
        Bh = Bm.reshape(Bsz, T, G, N).repeat_interleave(H // G, dim=2)
        Ch = Cm.reshape(Bsz, T, G, N).repeat_interleave(H // G, dim=2)
        y = ssd_recurrence(xs.reshape(Bsz, T, H, Pd), dt, A, Bh, Ch, P[pre + "D"], torch)
        y = y.reshape(Bsz, T, di)
        w = P[pre + "norm.weight"]
        if c["norm_before_gate"]:
            y = rms_norm(y, w, eps) * F.silu(z)
        else:
            # RMSNormGated(norm_before_gate=False) over the whole inner width, as FLA's
            # layer builds it: rmsnorm(y * silu(z)) * w
            y = rms_norm(y * F.silu(z), w, eps)
        return linear(y, pre + "out_proj", bias=c["use_bias"])

    attn = {"gla": gla_attn, "deltanet": deltanet_attn, "retnet": retnet_attn}
    mixer = {"mamba": mamba_mixer, "mamba2": mamba2_mixer}
    if name in attn:
        root, final_norm = "model", "model.norm.weight"
    elif name in mixer:
        root, final_norm = "backbone", "backbone.norm_f.weight"
    else:
        raise NotImplementedError(f"no reference for backbone {name!r}")
    if cfg["resona"]["layers"]:
        raise NotImplementedError("the Resona layers have no reference here")

    emb = P[root + ".embeddings.weight"]
    x = F.embedding(ids, emb)
    for i in range(cfg["num_layers"]):
        pre = f"{root}.layers.{i}."
        if name in attn:
            # pre-norm block: h = x + attn(attn_norm(x)); out = h + mlp(mlp_norm(h))
            h = x + attn[name](rms_norm(x, P[pre + "attn_norm.weight"], eps), pre + "attn.")
            x = h + mlp(rms_norm(h, P[pre + "mlp_norm.weight"], eps), pre + "mlp")
        else:
            # mixer block: out = x + mixer(norm(x))
            x = x + mixer[name](rms_norm(x, P[pre + "norm.weight"], eps), pre + "mixer.")
    x = rms_norm(x, P[final_norm], eps)
    head = emb if cfg["tie_embeddings"] else P["lm_head.weight"]
    return x @ head.T


def load_inputs(path, torch):
    """(config dict, parameters name -> float64 leaf in the file's order, ids, labels)."""
    metadata, raw = read_safetensors(path)
    cfg = json.loads(metadata["config"])
    ids, labels = to_torch(raw.pop("input_ids"), torch), to_torch(raw.pop("labels"), torch)
    P = {n: to_torch(e, torch).requires_grad_(True) for n, e in raw.items()}
    if cfg["tie_embeddings"] == ("lm_head.weight" in P):
        raise ValueError(f"{path}: tie_embeddings is {cfg['tie_embeddings']} but lm_head.weight "
                         f"is {'present' if 'lm_head.weight' in P else 'absent'}")
    return metadata, cfg, P, ids, labels


def expected_outputs(path, torch):
    """Runs the model of one inputs file: (metadata, list of output tensors to write)."""
    F = torch.nn.functional
    metadata, cfg, P, ids, labels = load_inputs(path, torch)
    names = list(P)
    logits = run_model(cfg, P, ids, torch)
    vocab = logits.shape[-1]
    # Mean over the labels that are not -100 (nn.CrossEntropyLoss's default).
    loss = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
    grads = torch.autograd.grad(loss, [P[n] for n in names], allow_unused=True)
    unused = [n for n, g in zip(names, grads) if g is None]
    if unused:
        raise ValueError(f"{path}: the reference does not use the parameters {unused}")
    out = [from_torch_f32("logits", logits, torch), from_torch_f32("loss", loss.reshape(1), torch)]
    out += [from_torch_f32("grad." + n, g, torch) for n, g in zip(names, grads)]
    print(f"{os.path.basename(path)}: {cfg['name']}, {len(names)} parameter tensors, "
          f"loss {loss.item():.10f}, max |logit| {logits.abs().max().item():.4f}, "
          f"max |grad| {max(g.abs().max().item() for g in grads):.3e}")
    return metadata, out


def cross_check_transformers(path, torch):
    """Mamba and Mamba2 logits against Hugging Face transformers' own models (their torch
    paths, which FLA's layers copy; same parameter names), where transformers is
    installed. Prints the differences; the golden data does not depend on it."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: no cross-check")
        return
    metadata, cfg, P, ids, labels = load_inputs(path, torch)
    name = cfg["name"]
    if name not in ("mamba", "mamba2"):
        return
    try:
        if name == "mamba":
            c = cfg["mamba"]
            hf_cfg = transformers.MambaConfig(
                vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                state_size=c["state_size"], num_hidden_layers=cfg["num_layers"],
                layer_norm_epsilon=cfg["norm_eps"], expand=c["expand"],
                conv_kernel=c["conv_kernel"], use_bias=c["use_bias"],
                use_conv_bias=c["use_conv_bias"],
                time_step_rank=P["backbone.layers.0.mixer.dt_proj.weight"].shape[1],
                tie_word_embeddings=cfg["tie_embeddings"])
            model = transformers.MambaForCausalLM(hf_cfg)
        else:
            c = cfg["mamba2"]
            di = c["expand"] * cfg["hidden_size"]
            hf_cfg = transformers.Mamba2Config(
                num_heads=di // c["head_dim"], head_dim=c["head_dim"],
                vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                state_size=c["state_size"], num_hidden_layers=cfg["num_layers"],
                layer_norm_epsilon=cfg["norm_eps"], expand=c["expand"],
                conv_kernel=c["conv_kernel"], n_groups=c["n_groups"], use_bias=c["use_bias"],
                use_conv_bias=c["use_conv_bias"], chunk_size=c["chunk_size"],
                tie_word_embeddings=cfg["tie_embeddings"])
            model = transformers.Mamba2ForCausalLM(hf_cfg)
        model = model.to(torch.float64).eval()
        state = {n: t.detach() for n, t in P.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        with torch.no_grad():
            hf_logits = model(input_ids=ids).logits
            ours = run_model(cfg, P, ids, torch)
        print(f"transformers {transformers.__version__} {name}: missing {missing}, "
              f"unexpected {unexpected}, max |logits - ours| "
              f"{(hf_logits - ours).abs().max().item():.3e} (max |logit| "
              f"{ours.abs().max().item():.3f})")
    except Exception as e:  # an informative check only
        print(f"transformers cross-check of {name} failed: {type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*",
                    help="*.inputs.safetensors files, or folders holding them")
    ap.add_argument("--out", help="folder for the <name>.expected.safetensors files")
    ap.add_argument("--self-test", action="store_true",
                    help="check the safetensors reader/writer (no PyTorch needed); with a "
                         "folder, also rewrite its files byte for byte")
    ap.add_argument("--cross-check", action="store_true",
                    help="also compare Mamba and Mamba2 with transformers' models")
    args = ap.parse_args()
    if args.self_test:
        self_test(args.inputs[0] if args.inputs else None)
        return 0
    files = []
    for p in args.inputs:
        files += sorted(glob.glob(os.path.join(p, "*.inputs.safetensors"))) if os.path.isdir(p) \
            else [p]
    if not files or not args.out:
        ap.error("give the inputs and --out")
    import torch
    torch.set_num_threads(1)  # one summation order; the models are tiny
    print(f"torch {torch.__version__}")
    check_recurrences(torch)
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for path in files:
        try:
            metadata, out = expected_outputs(path, torch)
        except Exception:  # report it and go on with the other backbones
            traceback.print_exc()
            failed.append(path)
            continue
        base = os.path.basename(path)[:-len(".inputs.safetensors")]
        md = {"backbone": metadata.get("backbone", ""), "inputs": os.path.basename(path),
              "reference": f"tools/golden/backbones.py, torch {torch.__version__}, float64"}
        write_safetensors(os.path.join(args.out, base + ".expected.safetensors"), out, md)
        if args.cross_check:
            cross_check_transformers(path, torch)
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
