"""Linear attention throughput: seqzoo (Triton chunk kernels; the torch path on CPU) beside causal torch SDPA
and, when installed, fla's ``chunk_linear_attn`` (no decay) and ``chunk_lightning_attn`` (decay), fwd and
fwd+bwd, ``[B, T, H, D]`` inputs.

FLOPs are those the chunked algorithm executes with chunk C = 64, per token and head
``2·C·(K + V) + 4·K·V`` forward (intra-chunk QKᵀ and AV, inter-chunk Q·h and the state update Kᵀ·V);
fwd+bwd counts 3× that. Bytes are the unavoidable traffic: q, k, v read and o written (fwd), plus do read and
dq, dk, dv written (fwd+bwd). SDPA rows use causal attention FLOPs ``2·T²·D`` per head (fwd), 3.5× for fwd+bwd.
"""

from __future__ import annotations

import torch

from seqzoo.kernels import linear_attention

DEFAULT_GPU_SHAPES = ["8x2048", "2x8192", "1x32768"]
DEFAULT_CPU_SHAPES = ["1x256", "1x1024"]
CHUNK = 64


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", nargs="+", default=None, help="BxT pairs; default: the issue's three on a GPU")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-fla", action="store_true", help="skip fla even when it is installed")
    parser.add_argument("--no-sdpa", action="store_true")


def _fla():
    """fla's ops, or the reason they are unavailable."""
    try:
        from fla.ops.lightning_attn import chunk_lightning_attn
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:  # not installed, or it refuses this triton / GPU
        return None, f"fla not importable: {type(e).__name__}: {str(e)[:80]}"
    return (chunk_linear_attn, chunk_lightning_attn), None


def _lightning_decay(H: int, device) -> torch.Tensor:
    # TransNormerLLM's layer-0 decay (the one fla's chunk_lightning_attn uses for layer_idx=0 of 12)
    from seqzoo.architectures.transnormer.modeling_transnormer import decay_rates

    return decay_rates(H, 0, 12, device)


def run(args) -> list[dict]:
    from . import common
    from .common import time_fn

    dev = args.device
    dtype = getattr(torch, args.dtype)
    if dev.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU matmuls in bf16 are slow emulation: measure the path users run
    shapes = args.shapes or (DEFAULT_GPU_SHAPES if dev.type == "cuda" else (["1x64"] if common.SMOKE else DEFAULT_CPU_SHAPES))
    H, D = args.heads, args.dim
    backend = "triton" if dev.type == "cuda" else "torch"
    fla_ops, fla_note = (None, "skipped (--no-fla)") if args.no_fla else _fla()
    if dev.type != "cuda" and fla_ops is not None:
        fla_ops, fla_note = None, "fla has no CPU path"
    rows = []
    for shape in shapes:
        B, T = (int(x) for x in shape.lower().split("x"))
        label = f"B{B} T{T} H{H} D{D} {str(dtype)[6:]}"
        q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dtype) * 0.1 for _ in range(3))
        do = torch.randn(B, T, H, D, device=dev, dtype=dtype)
        decay = _lightning_decay(H, dev)
        el = q.element_size()
        tok = B * T
        la_flops = B * H * T * (2 * CHUNK * (D + D) + 4 * D * D)
        io_fwd = 4 * B * T * H * D * el
        io_bwd = io_fwd + 4 * B * T * H * D * el
        sdpa_flops = 2 * B * H * T * T * D  # causal: half of 4·T²·D

        impls = {
            f"seqzoo {backend}": lambda q, k, v: linear_attention(q, k, v, backend=backend)[0],
            f"seqzoo {backend} +decay": lambda q, k, v: linear_attention(q, k, v, decay=decay, backend=backend)[0],
        }
        if fla_ops is not None:
            lin, light = fla_ops
            impls["fla chunk_linear_attn"] = lambda q, k, v: lin(q, k, v, scale=1.0, normalize=False)[0]
            impls["fla chunk_lightning_attn"] = lambda q, k, v: light(q, k, v, layer_idx=0, num_layers=12,
                                                                        scale=1.0)[0]
        if not args.no_sdpa:
            def sdpa(q, k, v):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            impls["torch SDPA causal"] = sdpa

        for name, fn in impls.items():
            is_sdpa = name.startswith("torch SDPA")
            # SDPA takes [B, H, T, D]: transposed copies made outside the timed region (its best case)
            args_ = [x.transpose(1, 2).contiguous() if is_sdpa else x for x in (q, k, v)]
            g = do.transpose(1, 2).contiguous() if is_sdpa else do
            leaves = [x.detach().requires_grad_(True) for x in args_]
            flops = sdpa_flops if is_sdpa else la_flops
            try:
                with torch.no_grad():
                    ms = time_fn(lambda: fn(*args_), dev)
                rows.append(common.emit({"impl": name, "shape": label, "pass": "fwd", "ms": ms,
                                         "first call s": common.LAST_FIRST_CALL_S, "tokens": tok,
                             "flops": flops, "bytes": io_fwd}))

                def fwd_bwd():
                    for x in leaves:
                        x.grad = None
                    fn(*leaves).backward(g)

                ms = time_fn(fwd_bwd, dev)
                rows.append(common.emit({"impl": name, "shape": label, "pass": "fwd+bwd", "ms": ms,
                                         "first call s": common.LAST_FIRST_CALL_S, "tokens": tok,
                             "flops": (3.5 if is_sdpa else 3.0) * flops, "bytes": io_bwd}))
            except Exception as e:  # e.g. out of memory, or a peer kernel refusing this GPU
                rows.append({"impl": name, "shape": label, "pass": "fwd", "ms": float("nan"),
                             "note": f"failed: {type(e).__name__}: {str(e)[:100]}"})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if fla_ops is None:
            rows.append({"impl": "fla chunk_linear_attn / chunk_lightning_attn", "shape": label, "pass": "-",
                         "ms": float("nan"), "note": fla_note})
    return rows
