"""TCNCA's TCN (``dilated_conv``) against MEGA's damped EMA (``ema``) at the same width, forward and
forward+backward, ``x [B, T, D]``. On CPU the torch paths (EMA: FFT as MEGA, and the chunked scan); on a GPU
the fused Triton TCN against the FFT EMA (cuFFT). The CPU target: the TCN with default settings ≥ 2× faster
than the FFT EMA forward at T = 131072. The TCN rows note the receptive field (the EMA's is the whole
sequence, damped).

With ``--layers``: whole-layer throughput (one Block: mixer + MEGA's FFN) of ``tcnca`` and ``mega`` at the same
sizes, fwd+bwd tokens/s at ``--layer-T`` tokens (default 4096), hidden ``--layer-hidden`` (default 512).

FLOPs: TCN ``2·L·K·T·D`` multiply-adds forward (activations not counted); fwd+bwd counts 3× that. Bytes: x
read, y written (fwd); plus dy read and dx written (fwd+bwd).
"""

from __future__ import annotations

import torch

from seqzoo.kernels import dilated_conv, ema
from seqzoo.kernels.dilated_conv import receptive_field
from seqzoo.kernels.ema import mega_ema_coefficients

DEFAULT_LENGTHS = [1024, 4096, 16384, 65536, 131072]


def add_arguments(parser) -> None:
    parser.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512, help="D, the channels of both ops")
    parser.add_argument("--kernel-size", type=int, default=4, help="TCN taps per level (tcnca default)")
    parser.add_argument("--dilation-base", type=int, default=4, help="TCN dilation base (tcnca default)")
    parser.add_argument("--depth", type=int, default=6, help="TCN levels (tcnca default)")
    parser.add_argument("--activation", default="silu")
    parser.add_argument("--ndim", type=int, default=16, help="EMA expansion N (16 in every MEGA config)")
    parser.add_argument("--chunk", type=int, default=64, help="chunk of the EMA scan path")
    parser.add_argument("--no-scan", action="store_true", help="skip the EMA scan rows")
    parser.add_argument("--literal-max-T", type=int, default=16384,
                        help="also time MEGA's own kernel generation (an exp over a [D, N, T] table, 4.3 GB at "
                             "T = 131072) up to this length; 0 = never")
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                        help="GPU input dtype (CPU always fp32)")
    parser.add_argument("--layers", action="store_true", help="also time the tcnca and mega mixers")
    parser.add_argument("--layer-T", type=int, default=4096)
    parser.add_argument("--layer-hidden", type=int, default=512)
    parser.add_argument("--layer-chunk", type=int, default=128, help="attention chunk of both layers")
    parser.add_argument("--layer-batch", type=int, default=1)


def _time(fn, leaves, grad, dev, pass_):
    from .common import time_fn

    if pass_ == "fwd":
        with torch.no_grad():
            return time_fn(fn, dev, rep_ms=100, min_reps=2)

    def fwd_bwd():
        for x in leaves:
            x.grad = None
        fn().backward(grad)

    return time_fn(fwd_bwd, dev, rep_ms=100, min_reps=2)


def run(args) -> list[dict]:
    from . import common

    if getattr(common, "SMOKE", False):  # a dry run of the command line: tiny shapes
        args.lengths, args.dim, args.layer_T, args.layer_hidden = [256], 64, 256, 64
    dev = args.device
    dtype = getattr(torch, args.dtype) if dev.type == "cuda" else torch.float32
    B, D, N = args.batch, args.dim, args.ndim
    L, K, base = args.depth, args.kernel_size, args.dilation_base
    rf = receptive_field(L, K, base)
    tcn_backend = "triton" if dev.type == "cuda" else "torch"
    rows = []
    for T in args.lengths:
        label = f"B{B} T{T} D{D} {str(dtype)[6:]}"
        x = torch.randn(B, T, D, device=dev, dtype=dtype)
        dy = torch.randn(B, T, D, device=dev, dtype=dtype)
        w = (0.3 * torch.randn(L, D, K, device=dev)).requires_grad_(True)
        bias = torch.zeros(L, D, device=dev, requires_grad=True)
        params = [torch.randn(D, N, device=dev) * s for s in (0.2, 0.2, 1.0, 1.0)]
        params = [p.requires_grad_(True) for p in params]
        xl = x.detach().requires_grad_(True)
        impls = {
            f"TCN {tcn_backend} K={K} base={base} L={L}": (
                lambda: dilated_conv(xl, w, bias, dilation_base=base, activation=args.activation,
                                     backend=tcn_backend)[0], [xl, w, bias], f"receptive field {rf}"),
            f"EMA fft N={N}": (lambda: ema(xl, *mega_ema_coefficients(*params), backend="fft")[0], [xl] + params,
                               "receptive field T"),
        }
        if T <= args.literal_max_T:
            impls[f"EMA fft N={N}, MEGA's [D,N,T] kernel"] = (lambda: _mega_literal(xl, *params), [xl] + params,
                                                            "receptive field T")
        if not args.no_scan:
            impls[f"EMA scan N={N} C={args.chunk}"] = (
                lambda: ema(xl, *mega_ema_coefficients(*params), backend="scan", chunk_size=args.chunk)[0],
                [xl] + params, "receptive field T")
        times = {}
        for name, (fn, leaves, note) in impls.items():
            for pass_ in args.passes:
                try:
                    ms = _time(fn, leaves, dy, dev, pass_)
                except Exception as e:  # noqa: BLE001 - a failed row is reported, the run goes on
                    rows.append({"impl": name, "shape": label, "pass": pass_, "ms": float("nan"),
                                 "note": f"failed: {type(e).__name__}: {str(e)[:100]}"})
                    continue
                times[(name, pass_)] = ms
                el = x.element_size()
                row = {"impl": name, "shape": label, "pass": pass_, "ms": ms, "tokens": B * T, "note": note,
                       "bytes": (2 if pass_ == "fwd" else 4) * B * T * D * el}
                if name.startswith("TCN"):
                    row["flops"] = 2 * L * K * B * T * D * (1 if pass_ == "fwd" else 3)
                rows.append(row)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for r in rows:
            if r["shape"] == label and r["impl"].startswith("TCN"):
                fft = times.get((f"EMA fft N={N}", r["pass"]))
                if fft and r["ms"] == r["ms"]:
                    r["note"] = f"receptive field {rf}; {fft / r['ms']:.2f}x the FFT EMA's speed"
        del x, dy, xl
    if args.layers:
        rows += _layers(args, dev)
    return rows


def _mega_literal(x, delta, alpha, beta, gamma):
    """MEGA's MultiHeadEMA as its code computes it: the kernel from an exp over a [D, N, T] Vandermonde table,
    then the FFT convolution (the comparison basis of TCNCA's paper)."""
    T, N = x.shape[1], delta.shape[-1]
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    vander = torch.arange(T, device=x.device)[None, None, :] * torch.log(q)[..., None]  # [D, N, T]
    k = torch.einsum("dnl,dn->dl", (p * beta)[..., None] * torch.exp(vander), gamma / N ** 0.5)  # [D, T]
    xt = x.float().transpose(1, 2)
    y = torch.fft.irfft(torch.fft.rfft(xt, n=2 * T) * torch.fft.rfft(k, n=2 * T), n=2 * T)[..., :T]
    return y.transpose(1, 2).to(x.dtype)


def _layers(args, dev) -> list[dict]:
    """One whole layer (Block: norm -> mixer -> residual, norm -> MEGA's FFN -> residual) of ``tcnca`` and
    ``mega`` at the same sizes (MEGA's EnWik8 layer: z = D/4, v = 2D, FFN 2D), fwd+bwd, tokens/s."""
    from transformers import AutoModel

    import seqzoo

    rows = []
    T, H, B = args.layer_T, args.layer_hidden, args.layer_batch
    backend = "triton" if dev.type == "cuda" else "torch"
    for kind in ("tcnca", "mega"):
        cfg = seqzoo.make_config(kind, hidden_size=H, num_hidden_layers=1, num_heads=max(1, H // 64),
                                 z_dim=max(16, H // 4), v_dim=2 * H, chunk_size=args.layer_chunk,
                                 kernel_backend=backend, vocab_size=259)
        block = AutoModel.from_config(cfg).layers[0].to(dev)
        x = torch.randn(B, T, H, device=dev, requires_grad=True)
        g = torch.randn(B, T, H, device=dev)
        leaves = [x] + list(block.parameters())
        ms = _time(lambda: block(x), leaves, g, dev, "fwd+bwd")
        mixer = block.mixer
        note = (f"TCN receptive field {mixer.receptive_field}" if kind == "tcnca"
                else f"EMA N={mixer.settings.ndim} ({mixer.settings.ema_backend})")
        rows.append({"impl": f"{kind} layer (chunk {args.layer_chunk})", "shape": f"B{B} T{T} hidden {H}",
                     "pass": "fwd+bwd", "ms": ms, "tokens": B * T, "note": note})
    tc, me = rows[-2]["ms"], rows[-1]["ms"]
    rows[-2]["note"] += f"; {me / tc:.2f}x the mega layer's speed"
    return rows
