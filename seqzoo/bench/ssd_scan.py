"""``python -m seqzoo.bench ssd_scan``: the SSD scan (Mamba-2) beside torch SDPA (causal) and mamba_ssm.

GPU (default when CUDA is present): bf16, (B, T, H, P, N) = (8, 2048, 32, 64, 128), (2, 8192, 32, 64, 128),
(1, 32768, 32, 64, 128), one group of B/C; rows for seqzoo's Triton kernels, ``scaled_dot_product_attention``
(causal, H heads of dim P) and mamba_ssm's ``mamba_chunk_scan_combined`` (chunk 256) when importable (a row with
a note otherwise), fwd and fwd+bwd.

CPU (``--device cpu``): fp32, B1 T2048 H4 P64 N64; the torch chunked path against the per-token reference and
against ``minimal``, our re-implementation of the pure-PyTorch listing the SSD authors publish
(``ssd_minimal_discrete`` in mamba_ssm's ``modules/ssd_minimal.py``, the paper's Listing 1: einsums over
per-head B/C, a "segsum" built by a masked cumsum, chunk states mixed by a (chunks+1)² decay matrix), given
the same work (Δ from softplus, ``x·Δ``, ``A·Δ``, B/C expanded per head, ``+ D x``).

Estimates per token, chunk C = 64, counted for the algorithm: forward FLOPs per head ``2·C·P`` (scores × Δx)
``+ 4·P·N`` (chunk state, inter-chunk output) plus per group ``2·C·N`` (C Bᵀ); fwd+bwd 3× that. Bytes: x, y per
head and dt, B, C read (fwd); dy read and dx, ddt, dB, dC written as well (bwd). SDPA: causal ``2·T²·P`` per
head forward, 3.5× for fwd+bwd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import common

GPU_SHAPES = "8,2048,32,64,128;2,8192,32,64,128;1,32768,32,64,128"
CPU_SHAPES = "1,2048,4,64,64"
CHUNK = 64


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", default=None, help=f"B,T,H,P,N;... (GPU default {GPU_SHAPES}; CPU {CPU_SHAPES})")
    parser.add_argument("--groups", type=int, default=1, help="G, the number of B/C groups (H % G == 0)")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="GPU bf16, CPU fp32")
    parser.add_argument("--impls", default=None,
                        help="comma list of triton,sdpa,mamba_ssm (GPU default) or torch,reference,minimal (CPU)")
    parser.add_argument("--passes", default="fwd,fwd+bwd")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--rounds", type=int, default=None,
                        help="time every impl this many times, interleaved, and keep the fastest median (default: "
                             "1 on a GPU, 3 on a CPU, where other processes disturb single timings)")


def _shapes(text: str):
    return [tuple(int(x) for x in s.split(",")) for s in text.split(";") if s.strip()]


# ----------------------------------------------------------------------------------------------
# The SSD paper's minimal listing, re-implemented (same algorithm and the same einsums)
# ----------------------------------------------------------------------------------------------


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """``[..., L] -> [..., L, L]``: ``out[i, j] = Σ_{j < k ≤ i} a_k`` below the diagonal (0 on it), −inf above;
    built as the listing builds it (a masked cumsum of ``a`` repeated along a new axis, no differences)."""
    L = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, L)  # rows[k, j] = a_k
    below = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    sums = rows.masked_fill(~below, 0.0).cumsum(-2)  # sums[i, j] = Σ_{j < k ≤ i} a_k
    return sums.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_minimal(xd, ad, B, C, block, h0=None):
    """The listing: ``xd = x·Δ`` [b, T, h, p], ``ad = A·Δ`` [b, T, h], per-head B, C [b, T, h, n], T a multiple
    of ``block``. Returns y [b, T, h, p] (no D term) and the final state [b, h, p, n]."""
    b, T, h, p = xd.shape
    nc = T // block
    xd, B, C = (t.reshape(b, nc, block, h, t.shape[-1]) for t in (xd, B, C))  # [b, c, l, h, ·]
    ad = ad.reshape(b, nc, block, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    acum = ad.cumsum(-1)
    # 1. diagonal blocks: the masked, decayed "attention" inside each chunk
    decay = torch.exp(_segsum(ad))  # [b, h, c, l, l]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay, xd)
    # 2. the state each chunk leaves behind (from a zero start)
    to_end = torch.exp(acum[..., -1:] - acum)  # [b, h, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xd)
    # 3. the states entering each chunk: one (c+1)² decay matrix over chunk boundaries
    start = torch.zeros_like(states[:, :1]) if h0 is None else h0[:, None]
    states = torch.cat([start, states], 1)  # [b, c+1, h, p, n]
    mix = torch.exp(_segsum(F.pad(acum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", mix, states)
    entering, final = states[:, :-1], states[:, -1]
    # 4. what the entering state contributes to each output
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, torch.exp(acum))
    return (y_diag + y_off).reshape(b, T, h, p), final


# ----------------------------------------------------------------------------------------------


def _estimates(B, T, H, P, N, G, itemsize, bwd: bool, impl: str) -> tuple[float, float]:
    th, tg = B * T * H, B * T * G
    if impl == "sdpa":
        flops = 2.0 * B * H * T * T * P * (3.5 if bwd else 1.0)
        nbytes = th * 4 * P * itemsize * (2.5 if bwd else 1.0)
        return flops, nbytes
    flops = (th * (2.0 * CHUNK * P + 4.0 * P * N) + tg * 2.0 * CHUNK * N) * (3.0 if bwd else 1.0)
    fwd_bytes = th * 2 * P * itemsize + B * T * H * 4 + tg * 2 * N * itemsize
    return flops, fwd_bytes * (2.5 if bwd else 1.0)


def _inputs(B, T, H, P, N, G, dtype, device, grad: bool):
    x = torch.randn(B, T, H, P, device=device, dtype=dtype)
    dt = torch.randn(B, T, H, device=device, dtype=torch.float32) - 2.0  # Δ ≈ softplus(-2 + bias) ~ 0.1
    A = -torch.empty(H, device=device).uniform_(1, 16)
    Bm = torch.randn(B, T, G, N, device=device, dtype=dtype) / N ** 0.5
    Cm = torch.randn(B, T, G, N, device=device, dtype=dtype) / N ** 0.5
    D = torch.ones(H, device=device)
    dt_bias = torch.rand(H, device=device)
    ins = [x, dt, A, Bm, Cm, D, dt_bias]
    if grad:
        for t in ins:
            t.requires_grad_(True)
    return ins


def _make_call(impl, B, T, H, P, N, G, dtype, device, bwd: bool):
    """A zero-argument callable running one pass, or (None, note) when the impl cannot run here."""
    from ..kernels import ssd_scan

    ins = _inputs(B, T, H, P, N, G, dtype, device, bwd)
    x, dt, A, Bm, Cm, D, dt_bias = ins
    if impl in ("triton", "torch", "reference"):
        def fwd():
            return ssd_scan(x, dt, A, Bm, Cm, D=D, dt_bias=dt_bias, chunk_size=CHUNK, backend=impl)[0]
    elif impl == "minimal":
        if T % CHUNK:
            return None, f"the listing needs T % {CHUNK} == 0"

        def fwd():
            delta = F.softplus(dt + dt_bias)  # [B, T, H]
            Bh = Bm.repeat_interleave(H // G, dim=2)  # per-head B, C as the listing takes them
            Ch = Cm.repeat_interleave(H // G, dim=2)
            y, _ = ssd_minimal(x * delta[..., None], A * delta, Bh, Ch, CHUNK)
            return y + D[:, None] * x
    elif impl == "sdpa":
        q, k, v = (torch.randn(B, H, T, P, device=device, dtype=dtype, requires_grad=bwd) for _ in range(3))
        ins = [q, k, v]

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif impl == "mamba_ssm":
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except Exception as e:  # not installed, or it refuses this triton / GPU
            return None, f"mamba_ssm not importable ({type(e).__name__})"

        def fwd():
            return mamba_chunk_scan_combined(x, dt, A, Bm, Cm, chunk_size=256, D=D, dt_bias=dt_bias,
                                             dt_softplus=True)
    else:
        raise ValueError(f"ssd_scan bench: unknown impl {impl!r}; use triton, sdpa, mamba_ssm, torch, reference, "
                         "minimal")
    return common.pass_callable(fwd, ins, bwd)


def run(args) -> list[dict]:
    device = args.device
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = _shapes(args.shapes or (GPU_SHAPES if on_gpu else ("1,64,2,16,16" if common.SMOKE else CPU_SHAPES)))
    dtype = common.DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    impls = (args.impls or ("triton,sdpa,mamba_ssm" if on_gpu else "torch,reference,minimal")).split(",")
    G = args.groups
    rounds = args.rounds or (1 if on_gpu or common.SMOKE else 3)
    rows = []
    for B, T, H, P, N in shapes:
        shape = f"B{B} T{T} H{H} P{P} N{N} G{G} {str(dtype).replace('torch.', '')}"
        for p in args.passes.split(","):
            bwd = p == "fwd+bwd"
            timed, calls = {}, {}
            for impl in impls:
                row = {"impl": impl, "shape": shape, "pass": p, "ms": float("nan")}
                rows.append(row)
                try:
                    fn, note = _make_call(impl, B, T, H, P, N, G, dtype, device, bwd)
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
                flops, nbytes = _estimates(B, T, H, P, N, G, torch.finfo(dtype).bits // 8, bwd, impl)
                row.update(tokens=B * T, flops=flops, bytes=nbytes)
                timed[impl] = row["ms"]
            for r in rows:
                if r["shape"] != shape or r["pass"] != p:
                    continue
                if r["impl"] == "torch":
                    notes = [f"{timed[o] / timed['torch']:.1f}x faster than {o}" for o in ("reference", "minimal")
                             if o in timed]
                    r["note"] = "; ".join(notes)
                if r["impl"] == "triton" and "mamba_ssm" in timed:
                    r["note"] = f"{timed['mamba_ssm'] / timed['triton']:.2f}x mamba_ssm's speed"
    return rows
