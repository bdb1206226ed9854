"""Block (diagonal) attention throughput: seqzoo's Triton kernel (torch path on CPU) at block size w vs causal
torch SDPA over the whole sequence, fwd and fwd+bwd, ``[B, T, H, D]`` inputs. The target on a GPU: ≥ 10× faster
than SDPA at T = 32768 (the "speedup" note).

FLOPs: block attention executes ``4·T·w·D`` per head forward (QKᵀ and PV over each query's block tile);
causal SDPA ``2·T²·D``; fwd+bwd counts 3.5× the forward for both. Bytes: q, k, v read and o written (fwd), plus
do read and dq, dk, dv written (fwd+bwd).
"""

from __future__ import annotations

import torch

from seqzoo.kernels import block_attention

DEFAULT_GPU_SHAPES = ["8x2048", "2x8192", "1x32768"]
DEFAULT_CPU_SHAPES = ["1x1024", "1x4096"]


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", nargs="+", default=None, help="BxT pairs; default: the issue's three on a GPU")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--activation", default="softmax", choices=["softmax", "relu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])


def run(args) -> list[dict]:
    from . import common
    from .common import time_fn

    dev = args.device
    dtype = getattr(torch, args.dtype)
    if dev.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32
    shapes = args.shapes or (DEFAULT_GPU_SHAPES if dev.type == "cuda" else (["1x64"] if common.SMOKE else DEFAULT_CPU_SHAPES))
    H, D, w = args.heads, args.dim, args.block_size
    backends = ["triton", "torch"] if dev.type == "cuda" else ["torch"]
    rows = []
    for shape in shapes:
        B, T = (int(x) for x in shape.lower().split("x"))
        label = f"B{B} T{T} H{H} D{D} {str(dtype)[6:]}"
        q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dtype) for _ in range(3))
        do = torch.randn(B, T, H, D, device=dev, dtype=dtype)
        el = q.element_size()
        io_fwd = 4 * B * T * H * D * el
        io_bwd = io_fwd + 4 * B * T * H * D * el
        impls = {f"seqzoo {b} w={w} {args.activation}":
                 (lambda q, k, v, b=b: block_attention(q, k, v, block_size=w, activation=args.activation, backend=b))
                 for b in backends}
        impls["torch SDPA causal"] = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True)
        timings = {}
        for name, fn in impls.items():
            is_sdpa = name.startswith("torch SDPA")
            args_ = [x.transpose(1, 2).contiguous() if is_sdpa else x for x in (q, k, v)]
            g = do.transpose(1, 2).contiguous() if is_sdpa else do
            leaves = [x.detach().requires_grad_(True) for x in args_]
            flops = 2 * B * H * T * T * D if is_sdpa else 4 * B * H * T * w * D
            for pass_ in ("fwd", "fwd+bwd"):
                try:
                    if pass_ == "fwd":
                        with torch.no_grad():
                            ms = time_fn(lambda: fn(*args_), dev)
                    else:
                        def fwd_bwd():
                            for x in leaves:
                                x.grad = None
                            fn(*leaves).backward(g)

                        ms = time_fn(fwd_bwd, dev)
                except Exception as e:
                    rows.append({"impl": name, "shape": label, "pass": pass_, "ms": float("nan"),
                                 "note": f"failed: {type(e).__name__}: {str(e)[:100]}"})
                    continue
                timings[(name, pass_)] = ms
                rows.append(common.emit({"impl": name, "shape": label, "pass": pass_, "ms": ms,
                                         "first call s": common.LAST_FIRST_CALL_S, "tokens": B * T,
                             "flops": flops * (1.0 if pass_ == "fwd" else 3.5),
                             "bytes": io_fwd if pass_ == "fwd" else io_bwd}))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for r in rows:
            if r["shape"] == label and r["impl"].startswith("seqzoo") and (("torch SDPA causal", r["pass"]) in timings):
                r["note"] = f"{timings[('torch SDPA causal', r['pass'])] / r['ms']:.1f}x faster than SDPA"
    return rows
