"""The recurrent-state cache that ``generate()`` carries between steps.

One dict of tensors per layer, filled and read by that layer's mixer (an attention layer keeps ``k`` and
``v``; a recurrent layer its ``state`` and ``conv_*`` buffers). ``seen_tokens`` counts the tokens already
processed, which gives rotary positions and tells ``prepare_inputs_for_generation`` what to feed next.
"""

from __future__ import annotations

import torch


class ZooCache:
    is_compileable = False

    def __init__(self, num_layers: int):
        self.layers: list[dict[str, torch.Tensor]] = [dict() for _ in range(num_layers)]
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer_idx: int) -> dict[str, torch.Tensor]:
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0):
        return None

    def _map(self, fn) -> None:
        for layer in self.layers:
            for key, value in layer.items():
                layer[key] = fn(value)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: reorder the batch dim of every state."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def state_bytes(self) -> int:
        """Memory held by the cache, for recall-vs-state-size plots."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())
