"""The mixer registry. A mixer is the token-mixing layer of a block (attention, DeltaNet, ...).

Contract (every mixer follows it; the Block calls nothing else):

    class MyMixer(nn.Module):
        def __init__(self, config, layer_idx: int): ...
        def forward(self, hidden_states,            # [B, T, hidden]
                    attention_mask=None,            # [B, S] 1 = token, 0 = pad, S = cached + T tokens
                    cache=None,                     # ZooCache or None; read/write cache[layer_idx] (a dict)
                    cu_seqlens=None,                # packed sequences (B = 1): int [N + 1] offsets
                    position_ids=None) -> hidden_states  # [B, T] absolute positions (for rotary)
        @staticmethod
        def state_size(config) -> int: ...          # optional: numbers of recurrent state per token-sequence
                                                    # (zoology-style recall-vs-memory reporting)

A stateful mixer keeps its state in ``cache[layer_idx]`` and, given the state, processes the next tokens so
that "prefix, then one token at a time" equals the full forward. Pad tokens (``attention_mask == 0``) must
not change the state. The cache's ``seen_tokens`` is advanced by the backbone, not by mixers.

Register with ``@register_mixer("name")``; a config's ``mixer_pattern`` refers to mixers by these names.
"""

from __future__ import annotations

MIXERS: dict[str, type] = {}


def register_mixer(name: str):
    def wrap(cls):
        if name in MIXERS and MIXERS[name] is not cls:
            raise ValueError(f"mixer {name!r} is already registered by {MIXERS[name].__module__}")
        MIXERS[name] = cls
        cls.mixer_name = name
        return cls

    return wrap


def get_mixer(name: str) -> type:
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r} in mixer_pattern; registered mixers: {sorted(MIXERS)}")
    return MIXERS[name]
