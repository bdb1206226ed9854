"""Block: pre-norm residual block, ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``."""

from __future__ import annotations

import torch.nn as nn

from .layers import MLP, RMSNorm
from .mixers import get_mixer

try:  # transformers >= 4.52: a layer that gradient_checkpointing_enable() can recompute in the backward
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover
    GradientCheckpointingLayer = nn.Module


class Block(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = get_mixer(config.layer_mixers()[layer_idx])(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(config.hidden_size, config.resolved_intermediate_size, config.mlp_type)

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
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))
