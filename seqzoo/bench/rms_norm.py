"""RMSNorm throughput: the Triton kernel vs the torch path (and torch's fused F.rms_norm), fwd and fwd+bwd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels import rms_norm


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="rows (B*T); default by device")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])


def run(args) -> list[dict]:
    from . import common
    from .common import time_fn

    dev = args.device
    dtype = getattr(torch, args.dtype) if dev.type == "cuda" else torch.float32
    rows_list = args.rows or ([16384, 65536] if dev.type == "cuda" else ([64] if common.SMOKE else [1024, 4096]))
    impls = {"torch": lambda x, w: rms_norm(x, w, backend="torch"),
             "F.rms_norm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6)}
    if dev.type == "cuda":
        impls = {"seqzoo triton": lambda x, w: rms_norm(x, w, backend="triton"), **impls}
    rows = []
    for M in rows_list:
        x = torch.randn(M, args.dim, device=dev, dtype=dtype, requires_grad=True)
        w = torch.ones(args.dim, device=dev, dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)
        nbytes_fwd = 2 * x.numel() * x.element_size()
        rows.append(common.copy_row(x.detach(), f"{M}x{args.dim} {str(dtype)[6:]}"))
        for name, fn in impls.items():
            ms = time_fn(lambda: fn(x, w), dev)
            rows.append(common.emit(dict(impl=name, shape=f"{M}x{args.dim} {str(dtype)[6:]}", **{"pass": "fwd"},
                                         ms=ms, tokens=M, bytes=nbytes_fwd, **{"first call s": common.LAST_FIRST_CALL_S})))

            def fwd_bwd():
                x.grad = w.grad = None
                fn(x, w).backward(dy)

            ms = time_fn(fwd_bwd, dev)
            rows.append(common.emit(dict(impl=name, shape=f"{M}x{args.dim} {str(dtype)[6:]}", **{"pass": "fwd+bwd"},
                                         ms=ms, tokens=M, bytes=nbytes_fwd * 3,
                                         **{"first call s": common.LAST_FIRST_CALL_S})))
    return rows
