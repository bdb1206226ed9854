"""Block: one layer, a (mixer, FFN) pair with pre-norm residuals: ``x + mixer(norm(x))``, then
``x + ffn(norm(x))`` unless the layer's FFN is ``"none"``."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from .layers import RMSNorm
from .spec import FFNS, MIXERS, NO_FFN

try:  # transformers >= 4.52: a layer that gradient_checkpointing_enable() can recompute in the backward
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover
    GradientCheckpointingLayer = nn.Module


class Block(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        spec = config.layer_specs()[layer_idx]
        heads, dim = config.resolve_heads(spec, layer_idx)
        self.mixer_settings = dataclasses.replace(spec.mixer, num_heads=heads, head_dim=dim)
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = MIXERS[spec.mixer_type].cls(config, layer_idx, self.mixer_settings)
        if spec.ffn_type == NO_FFN:
            self.ffn_norm = self.ffn = None
        else:
            self.ffn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
            self.ffn = FFNS[spec.ffn_type].cls(config, layer_idx, spec.ffn)

    def state_size(self, config) -> int:
        """Recurrent-state numbers per sequence of this layer's mixer (0 when it keeps none of fixed size)."""
        fn = getattr(type(self.mixer), "state_size", None)
        return fn(config, self.mixer_settings) if fn is not None else 0

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        residual = hidden_states
        hidden_states = self.mixer(
            self.mixer_norm(hidden_states),
            attention_mask=attention_mask,
            cache=cache,
            cu_seqlens=cu_seqlens,
            position_ids=position_ids,
        )
        hidden_states = residual + hidden_states
        if self.ffn is None:
            return hidden_states
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))
