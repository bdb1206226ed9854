"""``python -m seqzoo.bench selective_scan``: Mamba-1's selective scan beside torch SDPA and mamba_ssm.

GPU (default when CUDA is present): bf16, (B, T, D, N) = (8, 2048, 2048, 16), (2, 8192, 2048, 16),
(1, 32768, 2048, 16), one group of B/C, with z, D, delta_bias and softplus (the Mamba block's call); rows for
seqzoo's Triton kernels, ``scaled_dot_product_attention`` (causal, D/64 heads of 64: a ruler) and mamba_ssm's
CUDA ``selective_scan_fn`` when importable (a row with a note otherwise), fwd and fwd+bwd.

CPU (``--device cpu``): fp32, B1 T2048 D256 N16; the torch two-level chunked scan against the per-token
reference.

Estimates per (token, channel, state column), counted for the algorithm: forward ~7 FLOPs (exp, the state
update's multiply-add, the output's multiply-add); fwd+bwd 3× that. Bytes: u, delta, z and y per (token, channel)
and B, C per (token, group, column) read/written once (fwd); 2.5× for fwd+bwd. SDPA as in the other benches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import common

GPU_SHAPES = "8,2048,2048,16;2,8192,2048,16;1,32768,2048,16"
CPU_SHAPES = "1,2048,256,16"


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", default=None, help=f"B,T,D,N;... (GPU default {GPU_SHAPES}; CPU {CPU_SHAPES})")
    parser.add_argument("--groups", type=int, default=1, help="G, the number of B/C groups (D % G == 0)")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="GPU bf16, CPU fp32")
    parser.add_argument("--impls", default=None,
                        help="comma list of triton,sdpa,mamba_ssm (GPU default) or torch,reference (CPU)")
    parser.add_argument("--passes", default="fwd,fwd+bwd")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--rounds", type=int, default=None,
                        help="time every impl this many times, interleaved, and keep the fastest median (default: "
                             "1 on a GPU, 3 on a CPU)")


def _shapes(text: str):
    return [tuple(int(x) for x in s.split(",")) for s in text.split(";") if s.strip()]


def _estimates(B, T, Dm, N, G, itemsize, bwd: bool, impl: str) -> tuple[float, float]:
    if impl == "sdpa":
        H = max(Dm // 64, 1)
        return 2.0 * B * H * T * T * 64 * (3.5 if bwd else 1.0), B * T * H * 4 * 64 * itemsize * (2.5 if bwd else 1)
    flops = 7.0 * B * T * Dm * N * (3.0 if bwd else 1.0)
    nbytes = (B * T * Dm * 4 + B * T * G * N * 2) * itemsize * (2.5 if bwd else 1.0)
    return flops, nbytes


def _inputs(B, T, Dm, N, G, dtype, device, grad: bool):
    u = torch.randn(B, T, Dm, device=device, dtype=dtype)
    delta = (torch.randn(B, T, Dm, device=device) - 3.0).to(dtype)  # Δ ≈ softplus(-3 + bias): ~0.05
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(Dm, 1)  # S4D-real
    Bm = torch.randn(B, T, G, N, device=device, dtype=dtype)
    Cm = torch.randn(B, T, G, N, device=device, dtype=dtype)
    D = torch.ones(Dm, device=device)
    z = torch.randn(B, T, Dm, device=device, dtype=dtype)
    bias = torch.rand(Dm, device=device)
    ins = [u, delta, A, Bm, Cm, D, z, bias]
    if grad:
        for t in ins:
            t.requires_grad_(True)
    return ins


def _make_call(impl, B, T, Dm, N, G, dtype, device, bwd: bool):
    from ..kernels import selective_scan

    ins = _inputs(B, T, Dm, N, G, dtype, device, bwd)
    u, delta, A, Bm, Cm, D, z, bias = ins
    if impl in ("triton", "torch", "reference"):
        def fwd():
            return selective_scan(u, delta, A, Bm, Cm, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                  backend=impl)[0]
    elif impl == "sdpa":
        H = max(Dm // 64, 1)
        q, k, v = (torch.randn(B, H, T, 64, device=device, dtype=dtype, requires_grad=bwd) for _ in range(3))
        ins = [q, k, v]

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif impl == "mamba_ssm":
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception as e:  # not installed, or its CUDA extension does not load here
            return None, f"mamba_ssm not importable ({type(e).__name__})"
        # its channel-major layout, prepared outside the timing
        uc, dc, zc = (t.detach().transpose(1, 2).contiguous().requires_grad_(bwd) for t in (u, delta, z))
        Bc, Cc = (t.detach().permute(0, 2, 3, 1).contiguous().requires_grad_(bwd) for t in (Bm, Cm))  # [B, G, N, T]
        ins = [uc, dc, A, Bc, Cc, D, zc, bias]

        def fwd():
            return selective_scan_fn(uc, dc, A, Bc, Cc, D, zc, bias, delta_softplus=True)
    else:
        raise ValueError(f"selective_scan bench: unknown impl {impl!r}; use triton, sdpa, mamba_ssm, torch, reference")
    return common.pass_callable(fwd, ins, bwd)


def run(args) -> list[dict]:
    device = args.device
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = _shapes(args.shapes or (GPU_SHAPES if on_gpu else ("1,64,32,4" if common.SMOKE else CPU_SHAPES)))
    dtype = common.DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    impls = (args.impls or ("triton,sdpa,mamba_ssm" if on_gpu else "torch,reference")).split(",")
    G = args.groups
    rounds = args.rounds or (1 if on_gpu or common.SMOKE else 3)
    rows = []
    for B, T, Dm, N in shapes:
        shape = f"B{B} T{T} D{Dm} N{N} G{G} {str(dtype).replace('torch.', '')}"
        for p in args.passes.split(","):
            bwd = p == "fwd+bwd"
            timed, calls = {}, {}
            for impl in impls:
                row = {"impl": impl, "shape": shape, "pass": p, "ms": float("nan")}
                rows.append(row)
                try:
                    fn, note = _make_call(impl, B, T, Dm, N, G, dtype, device, bwd)
                    if fn is None:
                        row["note"] = note
                        continue
                    fn()  # compile / autotune outside the timing
                    calls[impl] = (row, fn)
                except torch.OutOfMemoryError:
                    row["note"] = "out of memory"
                    torch.cuda.empty_cache()
            for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits every impl alike
                for impl, (row, fn) in calls.items():
                    ms = common.time_fn(fn, device)
                    row["ms"] = ms if row["ms"] != row["ms"] else min(row["ms"], ms)
            for impl, (row, fn) in calls.items():
                flops, nbytes = _estimates(B, T, Dm, N, G, torch.finfo(dtype).bits // 8, bwd, impl)
                row.update(tokens=B * T, flops=flops, bytes=nbytes)
                timed[impl] = row["ms"]
            for r in rows:
                if r["shape"] != shape or r["pass"] != p:
                    continue
                if r["impl"] == "torch" and "reference" in timed:
                    r["note"] = f"{timed['reference'] / timed['torch']:.1f}x faster than reference"
                if r["impl"] == "triton" and "mamba_ssm" in timed:
                    r["note"] = f"{timed['mamba_ssm'] / timed['triton']:.2f}x mamba_ssm's speed"
    return rows
