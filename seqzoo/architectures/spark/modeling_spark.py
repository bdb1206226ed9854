"""Spark-Attention, Spark-FFN and the thin Spark model classes.

Spark-FFN (``spark_ffn``), per token x ∈ R^d with r predictor dims and F neurons:

    a = GELU(statistical_topk(W₁ x[:r], kept_fraction))     W₁ [F, r]: the predictor, ~8% of a nonzero
    o = W_downᵀ (a ⊙ (W₂ x[r:]))                            W₂ [F, d - r]: values; W_down [F, d], row per neuron

W₁ and W₂ together are one d-wide input projection split along d (a non-gated FFN's parameter count: 2·F·d,
fewer than a gated FFN's 3·F·d of the same F). Training runs the masked dense path; without gradients and
for at most ``sparse_max_tokens`` tokens (decoding), ``sparse_ffn`` computes only the survivors' rows of W₂
and W_down. Both paths give the same numbers.

Spark-Attention (``spark_attention``), per head with r predictor dims of the head dim D:

    q, k, v = W_q x, W_k x, W_v x;  rotary on q[:r], k[:r] and, separately, on q[r:], k[r:]
    o = spark_attention(q, k, v, predictor_dims=r, top_k)    seqzoo.kernels.spark_attention:
        softmax over the keys whose s1 = q[:r]·k[:r]/√D passes the statistical top-k threshold,
        each weighted by softplus(q[r:]·k[r:]/√D)

Rotary is applied within each part (not across the split), so both partial scores depend on relative
positions only. The KV cache keeps k[:r], k[r:] and v head-major (``[B, Hkv, S, *]``): a decoding step reads the
r predictor dims of every cached key, then only the selected keys' other dims and values.

Measured sparsity: ``model.sparsity_report(input_ids)`` runs a no-grad forward that records, per layer, the
fraction of FFN neurons kept and the keys each query selected (see :func:`sparsity_report`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import sparse_ffn, spark_attention, statistical_topk
from ...kernels._backend import BACKENDS
from ...kernels.statistical_topk import quantile_multiplier
from ...kernels.statistical_topk.reference import TINY_VAR
from ...kernels.spark_attention import selection_counts, spark_attention_decode
from ...kernels.sparse_ffn.native import spark_ffn_step_native
from ..base import (
    FFNSettings,
    MixerSettings,
    RotaryEmbedding,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    register_ffn,
    register_mixer,
)
from ..transformer import modeling_transformer  # noqa: F401  (the "attention" mixer of the FFN-only preset)
from .configuration_spark import SparkConfig


def _default_attn_r(head_dim: int) -> int:
    return 2 * (head_dim // 4)  # about half, even (rotary acts on pairs within each part)


@dataclass
class SparkAttentionSettings(MixerSettings):
    num_kv_heads: int | None = None  # grouped-query attention: key/value heads; None: as many as num_heads
    rope_theta: float = 10000.0  # rotary base
    predictor_dims: int | None = None  # r: leading head dims that score keys (even, < head_dim); None: ~head_dim/2
    top_k: int = 256  # about how many keys a query attends to once it sees more (paper: 256)
    kernel_backend: str = "auto"  # seqzoo.kernels.spark_attention backend: auto | triton | torch | reference

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "num_kv_heads", "rope_theta", "predictor_dims", "top_k")
        self.require_choice(where, "kernel_backend", BACKENDS)
        if self.num_heads is not None and self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise self.invalid(where, "num_kv_heads", f"a divisor of num_heads ({self.num_heads})")
        if self.head_dim is not None:
            if self.head_dim % 2 or self.head_dim < 4:
                raise self.invalid(where, "head_dim", "an even number >= 4 (rotary on both parts)")
            r = self.predictor_dims
            if r is not None and (r % 2 or not 0 < r < self.head_dim or (self.head_dim - r) % 2):
                raise self.invalid(where, "predictor_dims", f"an even number in (0, head_dim = {self.head_dim})")


@register_mixer("spark_attention", settings=SparkAttentionSettings)
class SparkAttention(nn.Module):
    def __init__(self, config, layer_idx: int, settings: SparkAttentionSettings):
        super().__init__()
        self.layer_idx, self.settings = layer_idx, settings
        self.num_heads = settings.num_heads
        self.num_kv_heads = settings.num_kv_heads or settings.num_heads
        self.head_dim = D = settings.head_dim
        self.r = settings.predictor_dims or _default_attn_r(D)
        self.top_k = settings.top_k
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * D, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * D, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * D, bias=False)
        self.o_proj = nn.Linear(self.num_heads * D, hidden, bias=False)
        self.rotary_pred = RotaryEmbedding(self.r, theta=settings.rope_theta)
        self.rotary_rest = RotaryEmbedding(D - self.r, theta=settings.rope_theta)
        self.record_sparsity = False
        self.last_sparsity: dict | None = None

    @staticmethod
    def state_size(config, settings) -> int:
        return 0  # the KV cache grows with T: no fixed-size state

    def _rotate(self, q, k, position_ids):
        r = self.r
        q1, k1 = self.rotary_pred(q[..., :r], k[..., :r], position_ids)
        q2, k2 = self.rotary_rest(q[..., r:], k[..., r:], position_ids)
        return torch.cat([q1, q2], -1), torch.cat([k1, k2], -1)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        B, T, _ = hidden_states.shape
        H, Hkv, D, r = self.num_heads, self.num_kv_heads, self.head_dim, self.r
        q = self.q_proj(hidden_states).view(B, T, H, D)  # [B, T, H, D]
        k = self.k_proj(hidden_states).view(B, T, Hkv, D)  # [B, T, Hkv, D]
        v = self.v_proj(hidden_states).view(B, T, Hkv, D)
        if position_ids is None:
            offset = cache.seen_tokens if cache is not None else 0
            position_ids = (offset + torch.arange(T, device=q.device))[None].expand(B, T)
        q, k = self._rotate(q, k, position_ids)
        key_mask = attention_mask.bool() if attention_mask is not None else None  # [B, S]
        backend = self.settings.kernel_backend
        if cache is not None:
            state = cache[self.layer_idx]
            parts = {"k1": k[..., :r], "k2": k[..., r:], "v": v}
            for name, x in parts.items():  # [B, Hkv, S, *] head-major: a head's keys are contiguous
                cache.append(self.layer_idx, name, x.transpose(1, 2), dim=2)
            if T == 1 and not torch.is_grad_enabled():  # decoding: read r dims of every key, the rest of a few
                o = spark_attention_decode(q[:, 0], state["k1"], state["k2"], state["v"], top_k=self.top_k,
                                           key_mask=key_mask)[:, None]  # [B, 1, H, D]
                self._record(q, None, key_mask, cu_seqlens, state)
                return self.o_proj(o.reshape(B, T, H * D))
            k = torch.cat([state["k1"], state["k2"]], -1).transpose(1, 2)  # [B, S, Hkv, D]
            v = state["v"].transpose(1, 2)
        o = spark_attention(q, k, v, predictor_dims=r, top_k=self.top_k, cu_seqlens=cu_seqlens,
                            key_mask=key_mask, backend=backend)  # [B, T, H, D]
        self._record(q, k, key_mask, cu_seqlens, None)
        return self.o_proj(o.reshape(B, T, H * D))

    def _record(self, q, k, key_mask, cu_seqlens, state):
        if not self.record_sparsity:
            return
        if k is None:
            k = torch.cat([state["k1"], state["k2"]], -1).transpose(1, 2)
        sel, vis = selection_counts(q.detach(), k.detach(), self.r, self.top_k, cu_seqlens=cu_seqlens,
                                    key_mask=key_mask)
        real = vis > 0
        self.last_sparsity = {
            "keys_per_query": sel[real].float().mean().item(),
            "kept_fraction": (sel[real].float() / vis[real].float()).mean().item(),
            "max_keys_per_query": int(sel.max()),
        }


@dataclass
class SparkFFNSettings(FFNSettings):
    intermediate_size: int | None = None  # F, the neurons; None: the model's intermediate_size (or its default)
    predictor_dims: int | None = None  # r: input dims that feed the predictor; None: hidden_size / 2
    kept_fraction: float = 0.08  # fraction of neurons kept per token by the statistical top-k (paper: 8%)
    sparse_max_tokens: int = 8  # without gradients, inputs of at most this many tokens take the gather path
    kernel_backend: str = "auto"  # backend of statistical_topk / sparse_ffn: auto | triton | torch | reference

    def validate(self, where: str) -> None:
        self.require_positive(where, "intermediate_size", "predictor_dims")
        self.require_choice(where, "kernel_backend", BACKENDS)
        if not 0.0 < self.kept_fraction < 1.0:
            raise self.invalid(where, "kept_fraction", "a fraction in (0, 1)")
        if self.sparse_max_tokens < 0:
            raise self.invalid(where, "sparse_max_tokens", "a number >= 0")


@register_ffn("spark_ffn", settings=SparkFFNSettings)
class SparkFFN(nn.Module):
    def __init__(self, config, layer_idx: int, settings: SparkFFNSettings):
        super().__init__()
        hidden = config.hidden_size
        self.settings = settings
        self.intermediate_size = F_ = settings.intermediate_size or config.default_intermediate_size("spark_ffn")
        self.r = settings.predictor_dims or hidden // 2
        if not 0 < self.r < hidden:
            raise ValueError(f"spark_ffn (layer {layer_idx}): predictor_dims must be in (0, hidden_size = {hidden}), "
                             f"got {self.r}")
        self.predictor = nn.Linear(self.r, F_, bias=False)  # W₁: scores the neurons from x[:r]
        self.value_proj = nn.Linear(hidden - self.r, F_, bias=False)  # W₂: the value branch from x[r:]
        self.down_weight = nn.Parameter(torch.empty(F_, hidden))  # W_down, one contiguous row per neuron
        self.record_sparsity = False
        self.last_sparsity: dict | None = None

    def zoo_init_weights(self, init) -> None:
        init.normal_(self.down_weight, mean=0.0, std=0.02)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """a = GELU(statistical_topk(W₁ x[:r])): zero except on about kept_fraction of the neurons."""
        pre = self.predictor(x[..., : self.r])  # [..., F]
        kept = statistical_topk(pre, fraction=self.settings.kept_fraction, backend=self.settings.kernel_backend)
        return F.gelu(kept, approximate="tanh")  # GELU(0) = 0: the zeros stay zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]
        sparse = not torch.is_grad_enabled() and tokens <= self.settings.sparse_max_tokens
        if sparse and tokens == 1 and not self.record_sparsity and x.device.type == "cpu" \
                and self.settings.kernel_backend in ("auto", "torch"):
            return self._one_token_cpu(x)
        a = self.activations(x)
        if self.record_sparsity:
            self.last_sparsity = {"kept_fraction": (a != 0).float().mean().item()}
        xv = x[..., self.r:]
        if sparse:
            return sparse_ffn(a, xv, self.value_proj.weight, self.down_weight, backend=self.settings.kernel_backend)
        return (a * self.value_proj(xv)) @ self.down_weight.to(x.dtype)  # masked dense: [..., hidden]

    def _one_token_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-1 decoding on a CPU: the same numbers as ``activations`` + ``sparse_ffn``.

        In fp32 one call of the C kernel (``seqzoo.kernels.sparse_ffn.native``) does it all. Otherwise ~15
        PyTorch ops: at one token every op is microseconds of dispatch against ~0.2 ms for the predictor's
        matvec, so the threshold is kept as a Python float (mean and population std of the centred scores, as
        ``statistical_topk``), the survivors come from one ``nonzero`` (``relu(s - θ) > 0`` exactly where
        ``s > θ``), and ``embedding_bag`` sums the survivors' rows of W_down without copying them."""
        F_, r = self.intermediate_size, self.r
        v = x.reshape(-1)  # [hidden]
        z = quantile_multiplier(self.settings.kept_fraction * F_, F_)
        o = spark_ffn_step_native(v, self.predictor.weight, self.value_proj.weight, self.down_weight, z)
        if o is not None:  # the C kernel: everything below in one call
            return o.view(x.shape)
        s = torch.mv(self.predictor.weight, v[:r]).float()  # [F]
        c = s - s.sum().item() / F_  # scores minus their mean
        std = math.sqrt(max(torch.dot(c, c).item() / F_, TINY_VAR))
        shift = std * z  # θ - mean
        idx = (c > shift).nonzero().view(-1)  # [K] the survivors
        a = F.gelu(c.index_select(0, idx) - shift, approximate="tanh")  # [K]
        h = a * torch.mv(self.value_proj.weight.index_select(0, idx), v[r:]).float()  # [K]
        w = self.down_weight
        if w.dtype == torch.float32 and idx.numel():
            o = F.embedding_bag(idx[None], w, per_sample_weights=h[None], mode="sum")[0]  # [hidden]
        else:
            o = h @ w.index_select(0, idx).float()
        return o.to(x.dtype).view(x.shape)


def sparsity_report(model: nn.Module, input_ids: torch.Tensor | None = None, **forward_kwargs) -> dict:
    """Measured sparsity per layer: ``{"ffn_kept_fraction": mean, "ffn_kept_fraction/layer_i": ...,
    "attn_kept_fraction": ..., "attn_keys_per_query": ..., ...}`` (only the kinds the model has).

    With ``input_ids`` it runs one no-grad forward (``use_cache=False``) that records; without, it reports
    what the last forward recorded after ``set_sparsity_recording(model, True)``. Recording costs an extra
    predictor-score pass in the attention layers, so it is off in ordinary forwards."""
    layers = [m for m in model.modules() if isinstance(m, (SparkAttention, SparkFFN))]
    if input_ids is not None:
        was = [m.record_sparsity for m in layers]
        set_sparsity_recording(model, True)
        try:
            with torch.no_grad():
                model(input_ids, use_cache=False, **forward_kwargs)
        finally:
            for m, w in zip(layers, was):
                m.record_sparsity = w
    report: dict = {}
    sums: dict = {}
    for m in model.modules():
        if not isinstance(m, (SparkAttention, SparkFFN)) or m.last_sparsity is None:
            continue
        kind = "attn" if isinstance(m, SparkAttention) else "ffn"
        idx = getattr(m, "layer_idx", None)
        if idx is None:  # an FFN: find its block's index
            idx = next(i for i, blk in enumerate(_blocks(model)) if blk.ffn is m)
        for key, value in m.last_sparsity.items():
            report[f"{kind}_{key}/layer_{idx}"] = value
            sums.setdefault(f"{kind}_{key}", []).append(value)
    for key, values in sums.items():
        report[key] = max(values) if key.endswith("max_keys_per_query") else sum(values) / len(values)
    return dict(sorted(report.items()))


def set_sparsity_recording(model: nn.Module, on: bool = True) -> None:
    for m in model.modules():
        if isinstance(m, (SparkAttention, SparkFFN)):
            m.record_sparsity = on


def _blocks(model):
    base = getattr(model, "model", model)
    return list(base.layers)


class _SparsityMixin:
    def sparsity_report(self, input_ids: torch.Tensor | None = None, **forward_kwargs) -> dict:
        """See :func:`sparsity_report`: the measured fraction of FFN neurons and of keys used, per layer."""
        return sparsity_report(self, input_ids, **forward_kwargs)

    def set_sparsity_recording(self, on: bool = True) -> None:
        set_sparsity_recording(self, on)

    def diagnostics(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        """Reported beside the task's metrics by the trainer and the eval CLI (``seqzoo.eval.evaluate``)."""
        return sparsity_report(self, input_ids, attention_mask=attention_mask)


class SparkModel(_SparsityMixin, ZooModel):
    config_class = SparkConfig


class SparkForCausalLM(_SparsityMixin, ZooForCausalLM):
    config_class = SparkConfig


class SparkForSequenceClassification(_SparsityMixin, ZooForSequenceClassification):
    config_class = SparkConfig
