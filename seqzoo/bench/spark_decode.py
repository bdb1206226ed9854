"""Spark decoding speed: greedy decoding of a ``spark`` model against the dense ``transformer`` of the same
width, depth, heads and d_ff, in the same run, with a KV cache of ``--context`` tokens (batch 1, or each of
``--batch-sizes``); also the FFN alone (Spark-FFN at the kept fraction vs the dense SwiGLU FFN, one token per
sequence) and the FLOPs ratio of each.

Random weights (the speed depends on the shapes and the kept fraction only); the cache is filled with random
keys and values instead of a prefill (a 4096-token prefill at width 2048 would dominate the run). The
vocabulary is the byte tokenizer's 259, so the LM head is negligible. ``--sparsity ffn|attention`` measures one
half of Spark alone. Spark runs twice: with its C decode kernels (the default on a CPU) and with
``SEQZOO_NATIVE=0`` (PyTorch ops only); ``--no-native-rows`` skips the second. The models are timed in turn over
``--rounds`` rounds and each number is a median over all of them, so that a slow spell of a shared machine does
not land on one model only.

    python -m seqzoo.bench spark_decode --device cpu
    python -m seqzoo.bench spark_decode --device cuda --widths 1024 --batch-sizes 1 8
"""

from __future__ import annotations

import contextlib
import os

import torch

def add_arguments(parser) -> None:
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1],
                        help="sequences decoded together (the FFN alone: one token of each)")
    parser.add_argument("--context", type=int, default=4096, help="cached tokens before the timed steps")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--ffn-mult", type=float, default=4.0, help="d_ff = mult * width (same for both models)")
    parser.add_argument("--kept", type=float, default=0.08, help="Spark-FFN kept fraction")
    parser.add_argument("--top-k", type=int, default=256, help="Spark-Attention keys per query")
    parser.add_argument("--sparsity", default="both", choices=["both", "ffn", "attention"])
    parser.add_argument("--steps", type=int, default=8, help="timed decode steps per model and round")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds that time every model in turn (medians over all rounds)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-native-rows", action="store_true",
                        help="skip the spark rows with SEQZOO_NATIVE=0 (PyTorch ops instead of the C kernels)")


def _models(width, args, dtype, device):
    import seqzoo
    from transformers import AutoModelForCausalLM

    shared = dict(hidden_size=width, num_hidden_layers=args.layers, num_heads=width // args.head_dim,
                  intermediate_size=int(args.ffn_mult * width), vocab_size=259, max_position_embeddings=8192)
    dense = seqzoo.make_config("transformer", **shared)
    spark = seqzoo.make_config("spark", **shared, sparsity=args.sparsity, attn_top_k=args.top_k,
                               ffn_kept_fraction=args.kept)
    return [(name, AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval())
            for name, cfg in (("dense transformer", dense), ("spark", spark))]


def _fill_cache(model, context, dtype, device, batch: int = 1):
    """A ZooCache holding ``context`` random keys/values per layer, in each mixer's own layout."""
    from seqzoo.architectures.base import ZooCache
    from seqzoo.architectures.spark import SparkAttention

    cache = ZooCache(len(model.model.layers))
    for i, block in enumerate(model.model.layers):
        mixer = block.mixer
        Hkv, D = mixer.num_kv_heads, mixer.head_dim
        if isinstance(mixer, SparkAttention):  # head-major, predictor dims apart
            k = torch.randn(batch, Hkv, context, D, device=device, dtype=dtype)
            cache[i]["k1"], cache[i]["k2"] = k[..., : mixer.r].contiguous(), k[..., mixer.r:].contiguous()
            cache[i]["v"] = torch.randn(batch, Hkv, context, D, device=device, dtype=dtype)
        else:
            cache[i]["k"] = torch.randn(batch, context, Hkv, D, device=device, dtype=dtype)
            cache[i]["v"] = torch.randn(batch, context, Hkv, D, device=device, dtype=dtype)
    cache.seen_tokens = context
    return cache


def _decode_steps(model, args, dtype, device, batch: int = 1) -> list[float]:
    """ms of ``--steps`` greedy steps from a fresh cache of ``--context`` tokens (the step that follows the
    filled cache is left out: it also regrows the cache buffers once)."""
    import time

    from seqzoo.architectures.base.modeling import CACHE_FIELD

    times = []
    cache = _fill_cache(model, args.context, dtype, device, batch)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    with torch.no_grad():
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            out = model(tok, use_cache=True, **{CACHE_FIELD: cache})
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:
                times.append((time.perf_counter() - t0) * 1000.0)
            cache = getattr(out, CACHE_FIELD)
    return times


def _interleaved(variants, measure, rounds: int) -> dict:
    """``{name: median}`` over ``rounds`` rounds that take every ``(name, model, switch)`` variant in turn (each
    under its ``SEQZOO_NATIVE`` switch), pooling the ms that ``measure(model)`` returns, so that a slow spell of a
    shared machine falls on all of them, not on one."""
    import statistics

    times = {name: [] for name, _, _ in variants}
    for _ in range(rounds):
        for name, model, switch in variants:
            with _native(switch):
                times[name] += measure(model)
    return {name: statistics.median(t) for name, t in times.items()}


def _ffn_flops(width, F, kept, spark, r):
    if not spark:
        return 2 * 3 * F * width
    K = kept * F
    return 2 * (F * r + K * (width - r) + K * width)


def _attn_flops(width, heads, D, T, spark, r=None, top_k=None):
    proj = 2 * 4 * width * width
    if not spark:
        return proj + 2 * 2 * T * heads * D
    K = min(top_k, T)
    return proj + 2 * T * heads * r + 2 * K * heads * ((D - r) + D)


@contextlib.contextmanager
def _native(switch):
    """``SEQZOO_NATIVE`` set to ``switch`` inside (None: left as it is)."""
    from seqzoo.kernels._native import ENV_SWITCH

    old = os.environ.get(ENV_SWITCH)
    if switch is not None:
        os.environ[ENV_SWITCH] = switch
    try:
        yield
    finally:
        if switch is not None:
            if old is None:
                os.environ.pop(ENV_SWITCH, None)
            else:
                os.environ[ENV_SWITCH] = old


def _rows_at(width, batch, F, models, dense_name, spark, args, dtype, dev) -> list[dict]:
    """The FFN rows and the decode-step rows of one width and batch size."""
    from .common import time_fn

    rows = []
    shape = f"B={batch} d={width} L={args.layers} F={F} T={args.context}"
    # the FFN alone, one token per sequence: blocks of ~60 ms per variant, in turn
    x = torch.randn(batch, 1, width, device=dev, dtype=dtype)

    def ffn_block(model):
        ffn = model.model.layers[0].ffn
        with torch.no_grad():
            return [time_fn(lambda: ffn(x), dev, rep_ms=60)]

    ffn_ms = _interleaved(models, ffn_block, args.rounds)
    spark_ffn = type(spark.model.layers[0].ffn).__name__ == "SparkFFN"
    r_ffn = spark.model.layers[0].ffn.r if spark_ffn else 0
    fl_dense = _ffn_flops(width, F, args.kept, False, 0)
    fl_spark = _ffn_flops(width, F, args.kept, spark_ffn, r_ffn)
    for name, model, _ in models:
        kind = type(model.model.layers[0].ffn).__name__
        note = ""
        if name != dense_name:
            note = (f"{ffn_ms[dense_name] / ffn_ms[name]:.2f}x faster than dense; "
                    f"FLOPs {fl_dense / fl_spark:.2f}x fewer")
        rows.append(dict(impl=f"{name}: FFN ({kind})", shape=f"B={batch} d={width} F={F}", **{"pass": "1 token"},
                         ms=ffn_ms[name], tokens=batch, note=note))
    # whole-model greedy decode step
    step_ms = _interleaved(models, lambda model: _decode_steps(model, args, dtype, dev, batch), args.rounds)
    spark_attn = type(spark.model.layers[0].mixer).__name__ == "SparkAttention"
    heads = width // args.head_dim
    r_att = spark.model.layers[0].mixer.r if spark_attn else None
    per_layer_dense = _ffn_flops(width, F, args.kept, False, 0) + _attn_flops(width, heads, args.head_dim,
                                                                             args.context, False)
    per_layer_spark = fl_spark + _attn_flops(width, heads, args.head_dim, args.context, spark_attn, r_att,
                                             args.top_k)
    for name in step_ms:
        note = ""
        if name != dense_name:
            note = (f"{step_ms[dense_name] / step_ms[name]:.2f}x faster than dense; "
                    f"FLOPs/token {per_layer_dense / per_layer_spark:.2f}x fewer")
        rows.append(dict(impl=f"{name} ({'dense' if name == dense_name else args.sparsity})", shape=shape,
                         **{"pass": "decode step"}, ms=step_ms[name], tokens=batch, note=note))
    return rows


def run(args) -> list[dict]:
    dev = args.device
    dtype = getattr(torch, args.dtype)
    rows = []
    for width in args.widths:
        (dense_name, dense), (_, spark) = _models(width, args, dtype, dev)
        models = [(dense_name, dense, None), ("spark", spark, None)]
        if not args.no_native_rows:
            models.append(("spark, SEQZOO_NATIVE=0", spark, "0"))
        F = int(args.ffn_mult * width)
        for batch in args.batch_sizes:
            rows += _rows_at(width, batch, F, models, dense_name, spark, args, dtype, dev)
        del models, dense, spark
    return rows
