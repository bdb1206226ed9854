"""The mixer contract. A mixer is the token-mixing half of a layer (attention, DeltaNet, Mamba-2, ...); the
other half is an FFN (``register_ffn``, possibly ``"none"``). Both are registered types with typed settings
(``spec.py``).

Contract (every mixer follows it; the Block calls nothing else):

    @dataclass
    class MyMixerSettings(MixerSettings):           # num_heads / head_dim arrive resolved (never None)
        conv_size: int = 4                           # documented defaults that work at hidden 32-64

    @register_mixer("name", settings=MyMixerSettings)
    class MyMixer(nn.Module):
        def __init__(self, config, layer_idx: int, settings: MyMixerSettings): ...
            # shared sizes come from the model config (hidden_size, norm_eps, num_hidden_layers, ...);
            # everything else from ``settings``. Never read another mixer's fields from the config.
        def forward(self, hidden_states,            # [B, T, hidden]
                    attention_mask=None,            # [B, S] 1 = token, 0 = pad, S = cached + T tokens; None: no pads
                    cache=None,                     # ZooCache or None; read/write cache[layer_idx] (a dict)
                    cu_seqlens=None,                # packed sequences (B = 1): int [N + 1] offsets
                    position_ids=None) -> hidden_states  # [B, T] absolute positions (for rotary)
        @staticmethod
        def state_size(config, settings) -> int: ... # optional: numbers of recurrent state per sequence
                                                     # (zoology-style recall-vs-memory reporting)

A stateful mixer keeps its state in ``cache[layer_idx]`` and, given the state, processes the next tokens so
that "prefix, then one token at a time" equals the full forward. The cache's ``seen_tokens`` is advanced by
the backbone, not by mixers. A state that grows with the sequence (a KV cache) grows through
``cache.append(layer_idx, name, x, dim)``: amortised O(new tokens), where ``torch.cat`` onto the old tensor
would copy the whole cache every decode step.

Padding. Pad tokens (``attention_mask == 0``) must not change any output at a real token, nor the state.
A mixer whose kernel takes packed sequences (``cu_seqlens``) runs a padded batch packed: ``padding.pack``
once, the kernel on ``[1, N, ...]`` with the pack's ``cu_seqlens`` (and per-row initial/final states), then
``padding.unpack``. A mixer that cannot pack (a convolution over time, softmax attention with a mask) zeroes
what pads would write (conv inputs, keys' contributions) and masks what they would read.
"""

from __future__ import annotations

from .spec import MIXERS, MixerSettings, get_mixer, register_mixer  # noqa: F401

__all__ = ["MIXERS", "MixerSettings", "get_mixer", "register_mixer"]
