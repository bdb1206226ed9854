"""Statistical top-k: how far its survivor count is from k (exact ``torch.topk`` keeps exactly k), and its speed
against ``torch.topk`` + scatter.

Rows: Gaussian (the threshold's assumption), Student-t with 5 degrees of freedom and Laplace (heavier tails,
closer to real FFN pre-activations), and ``--model DIR``: the FFN predictor pre-activations of a trained
``spark`` checkpoint on random tokens. Columns (in "note"): mean relative deviation |count - k| / k, the
paper's rate sqrt(log d / d), the fraction of the exact top-k that survives (recall).

    python -m seqzoo.bench statistical_topk --device cpu
"""

from __future__ import annotations

import math

import torch

from seqzoo.kernels import statistical_topk


def add_arguments(parser) -> None:
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.08)
    parser.add_argument("--model", default=None, help="a saved spark model: also its FFN predictor rows")


def _rows(kind, n, d, device):
    if kind == "gaussian":
        return torch.randn(n, d, device=device) * torch.rand(n, 1, device=device) * 3 + torch.randn(n, 1, device=device)
    if kind == "student-t(5)":
        return torch.distributions.StudentT(5.0).sample((n, d)).to(device)
    return torch.distributions.Laplace(0.0, 1.0).sample((n, d)).to(device)


def _model_rows(path, n, device):
    from transformers import AutoModelForCausalLM

    from seqzoo.architectures.spark import SparkFFN

    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    ids = torch.randint(0, min(256, model.config.vocab_size), (max(1, n // 128), 128), device=device)
    rows = []
    hooks = [m.predictor.register_forward_hook(lambda mod, inp, out: rows.append(out.reshape(-1, out.shape[-1])))
             for m in model.modules() if isinstance(m, SparkFFN)]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    return rows


def _stats(x, fraction):
    d = x.shape[-1]
    k = max(1, round(fraction * d))
    y = statistical_topk(x, fraction=k / d, backend="torch")
    counts = (y > 0).sum(-1).float()
    exact = torch.zeros_like(x).scatter_(-1, torch.topk(x, k).indices, 1.0)
    recall = ((y > 0).float() * exact).sum(-1) / k
    return k, ((counts - k).abs() / k).mean().item(), recall.mean().item()


def run(args) -> list[dict]:
    from . import common
    from .common import emit, time_fn

    dev = args.device
    out = []
    for d in args.dims:
        for kind in ("gaussian", "student-t(5)", "laplace"):
            x = _rows(kind, args.rows, d, dev)
            k, dev_rel, recall = _stats(x, args.fraction)
            ms = time_fn(lambda: statistical_topk(x, fraction=k / d), dev)
            out.append(emit(dict(impl="statistical_topk", shape=f"{args.rows}x{d} {kind}", **{"pass": "fwd"}, ms=ms,
                            tokens=args.rows, bytes=2 * x.numel() * x.element_size(),
                            note=f"k={k}: |count-k|/k {dev_rel:.3f} (sqrt(log d/d) {math.sqrt(math.log(d) / d):.3f}), "
                                 f"recall {recall:.3f}")))
        x = _rows("gaussian", args.rows, d, dev)
        out.append(common.copy_row(x, f"{args.rows}x{d}"))
        k = max(1, round(args.fraction * d))
        ms = time_fn(lambda: torch.zeros_like(x).scatter_(-1, torch.topk(x, k).indices, 1.0), dev)
        out.append(emit(dict(impl="torch.topk + scatter", shape=f"{args.rows}x{d} gaussian", **{"pass": "fwd"},
                             ms=ms, tokens=args.rows, bytes=2 * x.numel() * x.element_size(), note=f"k={k}: exact")))
    if args.model:
        for i, x in enumerate(_model_rows(args.model, args.rows, dev)):
            k, dev_rel, recall = _stats(x, args.fraction)
            d = x.shape[-1]
            out.append(dict(impl="statistical_topk", shape=f"{x.shape[0]}x{d} layer {i} predictor", **{"pass": "fwd"},
                            ms=float("nan"), note=f"k={k}: |count-k|/k {dev_rel:.3f} "
                                                  f"(sqrt(log d/d) {math.sqrt(math.log(d) / d):.3f}), recall {recall:.3f}"))
    return out
