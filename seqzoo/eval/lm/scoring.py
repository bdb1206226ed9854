"""Bits per byte: the model call on a byte batch, the metric sums, their confidence interval, and a loop that
scores one byte range with any causal LM.

Bits per byte (bpb) is the mean negative log-likelihood of the scored bytes in nats divided by ln 2 (one
byte = one token, so it is also "bits per character" as the enwik8 papers report it).

The metric is kept as sums (``{name: tensor([sum, count])}``, float64), which add over batches and processes:

- ``loss``: summed NLL in nats over the scored bytes, and their number;
- ``bpb``: the same sum in bits;
- ``segment_bpb`` / ``segment_bpb_sq``: the sum of each segment's bpb and of its square, over segments (a
  segment = one row of one batch that scores at least one byte). :func:`finalize_bpb` turns them into a 95%
  confidence interval of the bpb, ``1.96 * sd(segment bpb) / sqrt(segments)`` -- the normal approximation
  that treats segments as independent samples. Neighbouring segments of the same text are correlated, so the
  interval is a guide to evaluation noise, not an exact statement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...architectures.base.modeling import CACHE_FIELD
from .windows import IGNORE_INDEX, CarryBatches, WindowBatches

LN2 = math.log(2.0)
BPB_METRICS = ("loss", "bpb", "segment_bpb", "segment_bpb_sq")


def carries_state(config) -> bool:
    """Whether every layer of ``config`` keeps a state of fixed size (a recurrent model: DeltaNet,
    TransNormer, ...), so that segments can be scored in order with the cache carrying the state. A layer
    whose mixer reports no fixed-size state (softmax attention: its KV cache grows with the text) makes the
    model a sliding-window model."""
    import dataclasses

    from ...architectures.base.spec import MIXERS

    specs = config.layer_specs()
    for i, spec in enumerate(specs):
        heads, dim = config.resolve_heads(spec, i)
        settings = dataclasses.replace(spec.mixer, num_heads=heads, head_dim=dim)
        fn = getattr(MIXERS[spec.mixer_type].cls, "state_size", None)
        if fn is None or fn(config, settings) <= 0:
            return False
    return True


def lm_forward(model, batch: dict, carry=None):
    """One model call on a byte batch: ``(logits [B, T, V], cache for the next segment or None)``. With
    ``batch["carry_state"]`` the model reads and returns its cache (``carry`` is the previous segment's, None
    for the first); otherwise the call is a plain forward (training windows, sliding windows)."""
    if batch.get("carry_state", False):
        out = model(input_ids=batch["input_ids"], use_cache=True, **{CACHE_FIELD: carry})
        return out.logits, getattr(out, CACHE_FIELD)
    out = model(input_ids=batch["input_ids"], use_cache=False)
    return out.logits, None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``logits [B, T, V]`` against the pre-shifted ``targets [B, T]``."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).to(logits.device),
                           ignore_index=IGNORE_INDEX)


def bpb_sums(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metric sums of one batch (see the module docstring); tensors on the logits' device (no host
    sync)."""
    B, T, V = logits.shape
    targets = targets.to(logits.device)
    scored = targets != IGNORE_INDEX  # [B, T]
    nll = F.cross_entropy(logits.float().reshape(-1, V), targets.clamp(min=0).reshape(-1), reduction="none")
    nll = nll.view(B, T).double() * scored  # [B, T], 0 where not scored
    row_nats, row_n = nll.sum(1), scored.sum(1).double()  # [B]
    has = row_n > 0
    seg = torch.where(has, row_nats / row_n.clamp(min=1) / LN2, torch.zeros_like(row_nats))  # [B] bpb per row
    n, n_seg = row_n.sum(), has.sum().double()
    nats = row_nats.sum()
    return {"loss": torch.stack([nats, n]), "bpb": torch.stack([nats / LN2, n]),
            "segment_bpb": torch.stack([seg.sum(), n_seg]), "segment_bpb_sq": torch.stack([(seg * seg).sum(), n_seg])}


def finalize_bpb(total: dict[str, torch.Tensor]) -> dict:
    """``{loss, bpb, bpb_ci95, num_targets, num_segments}`` from summed :func:`bpb_sums`."""
    nats, n = (float(x) for x in total["loss"])
    s1, m = (float(x) for x in total["segment_bpb"])
    s2 = float(total["segment_bpb_sq"][0])
    out = {"loss": nats / n if n else float("nan"), "bpb": nats / n / LN2 if n else float("nan")}
    if m > 1:
        var = max(s2 / m - (s1 / m) ** 2, 0.0) * m / (m - 1)  # unbiased variance of the segment bpb
        out["bpb_ci95"] = 1.96 * math.sqrt(var / m)
    else:
        out["bpb_ci95"] = float("nan")
    out["num_targets"] = int(n)
    out["num_segments"] = int(m)
    return out


def add_sums(total: dict | None, sums: dict) -> dict:
    if total is None:
        return {k: v.clone() for k, v in sums.items()}
    for k, v in sums.items():
        total[k] += v
    return total


@torch.no_grad()
def score_bytes(model, data, lo: int, hi: int, *, mode: str, segment: int = 512, stride: int = 128,
                context: int = 512, batch_size: int = 16, device=None) -> dict:
    """Bits per byte of ``model`` (a causal LM over byte ids 0..255) on bytes ``[lo, hi)`` of ``data``,
    every byte scored once (byte 0 of ``data`` excepted: nothing precedes it).

    ``mode="carry"``: ``batch_size`` streams read in segments of ``segment`` bytes with the cache carried
    between segments, each stream warmed up on the ``context`` bytes before it (:class:`CarryBatches`).
    ``mode="window"``: windows scoring ``stride`` bytes each, every byte seeing at least ``context`` bytes
    (:class:`WindowBatches`). Returns :func:`finalize_bpb`'s dict."""
    if mode == "carry":
        batches = CarryBatches(data, lo, hi, segment=segment, context=context, streams_per_rank=batch_size)
    elif mode == "window":
        batches = WindowBatches(data, lo, hi, stride=stride, context=context, batch_size=batch_size)
    else:
        raise ValueError(f"mode: expected 'carry' or 'window', got {mode!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    total, carry = None, None
    try:
        for batch in batches:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits, carry = lm_forward(model, batch, carry)
            total = add_sums(total, bpb_sums(logits, batch["targets"]))
    finally:
        model.train(was_training)
    return finalize_bpb(total)
