"""``python -m seqzoo.bench delta_rule``: the chunked delta rule beside torch SDPA (causal) and fla.

GPU (default when CUDA is present): bf16, (B, T, H, D) = (8, 2048, 16, 128), (2, 8192, 16, 128),
(1, 32768, 16, 128); rows for seqzoo's Triton kernels, ``torch.nn.functional.scaled_dot_product_attention``
(causal) and ``fla.ops.delta_rule.chunk_delta_rule`` when fla is importable (a row with a note otherwise), fwd
and fwd+bwd, as in ``shared/anchors``: k L2-normalized, beta = sigmoid(rand).

CPU (``--device cpu``): fp32, B1 T2048 H4 D64 by default; the torch chunked path against the per-token reference,
with the speedup in the note.

Estimates per (token, head), K = V = D, chunk C = 64, counted for the algorithm (not for what a kernel
recomputes): forward FLOPs 8 C D + 6 D^2 (K K^T, W, U, P = Q K^T, P V_new: 2 C D each; W S, K^T V_new,
Q S: 2 D^2 each); fwd+bwd FLOPs 3x the forward. Bytes: forward reads q, k, v, beta and writes o; the
backward also reads dO and writes dq, dk, dv, dbeta. SDPA: causal 2 B H T^2 D forward, 3.5x for fwd+bwd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import common

GPU_SHAPES = "8,2048,16,128;2,8192,16,128;1,32768,16,128"
CPU_SHAPES = "1,2048,4,64"
CHUNK = 64


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", default=None, help=f"B,T,H,D;... (GPU default {GPU_SHAPES}; CPU {CPU_SHAPES})")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="GPU bf16, CPU fp32")
    parser.add_argument("--impls", default=None,
                        help="comma list of triton,sdpa,fla (GPU default) or torch,reference (CPU default)")
    parser.add_argument("--passes", default="fwd,fwd+bwd")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")


def _shapes(text: str):
    return [tuple(int(x) for x in s.split(",")) for s in text.split(";") if s.strip()]


def _estimates(B, T, H, D, itemsize, bwd: bool, impl: str) -> tuple[float, float]:
    th = B * T * H
    if impl == "sdpa":
        flops = 2.0 * B * H * T * T * D * (3.5 if bwd else 1.0)
        nbytes = th * 4 * D * itemsize * (2.5 if bwd else 1.0)  # q, k, v, o (+ dO, dq, dk, dv, re-read q, k, v)
        return flops, nbytes
    flops = th * (8.0 * CHUNK * D + 6.0 * D * D) * (3.0 if bwd else 1.0)
    fwd_bytes = th * (4 * D + 1) * itemsize  # q, k, v, beta in; o out
    bwd_bytes = th * (5 * D + 1) * itemsize + th * (3 * D + 1) * itemsize  # q, k, v, beta, dO in; dq, dk, dv, dbeta out
    return flops, fwd_bytes + (bwd_bytes if bwd else 0)


def _inputs(B, T, H, D, dtype, device, grad: bool):
    q = torch.randn(B, T, H, D, device=device, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, D, device=device, dtype=torch.float32), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, device=device, dtype=dtype)
    beta = torch.rand(B, T, H, device=device, dtype=dtype).sigmoid()
    ins = [q, k, v, beta]
    if grad:
        for t in ins:
            t.requires_grad_(True)
    return ins


def _fla_op():
    try:
        from fla.ops.delta_rule import chunk_delta_rule
    except Exception as e:  # not installed, or an import-time refusal
        return None, f"fla not importable ({type(e).__name__})"
    return chunk_delta_rule, ""


def _make_call(impl: str, B, T, H, D, dtype, device, bwd: bool):
    """A zero-argument callable running one pass, or (None, note) when the impl cannot run here."""
    from ..kernels import delta_rule

    ins = _inputs(B, T, H, D, dtype, device, bwd)
    q, k, v, beta = ins
    if impl in ("triton", "torch", "reference"):
        def fwd():
            return delta_rule(q, k, v, beta, backend=impl)[0]
    elif impl == "sdpa":
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_(bwd) for x in (q, k, v))  # [B, H, T, D]
        ins = [qt, kt, vt]

        def fwd():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    elif impl == "fla":
        op, note = _fla_op()
        if op is None:
            return None, note

        def fwd():
            return op(q, k, v, beta, output_final_state=False)[0]
    else:
        raise ValueError(f"delta_rule bench: unknown impl {impl!r}; use triton, sdpa, fla, torch, reference")
    return common.pass_callable(fwd, ins, bwd)


def run(args) -> list[dict]:
    device = args.device
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = _shapes(args.shapes or (GPU_SHAPES if on_gpu else ("1,64,2,16" if common.SMOKE else CPU_SHAPES)))
    dtype = common.DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    impls = (args.impls or ("triton,sdpa,fla" if on_gpu else "torch,reference")).split(",")
    passes = args.passes.split(",")
    rows = []
    for B, T, H, D in shapes:
        shape = f"B{B} T{T} H{H} D{D} {str(dtype).replace('torch.', '')}"
        for p in passes:
            bwd = p == "fwd+bwd"
            timed = {}
            for impl in impls:
                row = {"impl": impl, "shape": shape, "pass": p, "ms": float("nan")}
                try:
                    fn, note = _make_call(impl, B, T, H, D, dtype, device, bwd)
                    if fn is None:
                        row["note"] = note
                        rows.append(row)
                        continue
                    row["ms"] = common.time_fn(fn, device)  # its first call (compile + autotune) apart
                    row["first call s"] = common.LAST_FIRST_CALL_S
                except torch.OutOfMemoryError:
                    row["note"] = "out of memory"
                    rows.append(row)
                    torch.cuda.empty_cache()
                    continue
                flops, nbytes = _estimates(B, T, H, D, torch.finfo(dtype).bits // 8, bwd, impl)
                row.update(tokens=B * T, flops=flops, bytes=nbytes)
                timed[impl] = row["ms"]
                rows.append(common.emit(row))
            if "reference" in timed and "torch" in timed:
                for r in rows:
                    if r["shape"] == shape and r["pass"] == p and r["impl"] == "torch":
                        r["note"] = f"{timed['reference'] / timed['torch']:.1f}x faster than reference"
            if "fla" in timed and "triton" in timed:
                for r in rows:
                    if r["shape"] == shape and r["pass"] == p and r["impl"] == "triton":
                        r["note"] = f"{timed['fla'] / timed['triton']:.2f}x fla's speed"
    return rows
