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
        self._room: dict[tuple[int, str], torch.Tensor] = {}  # buffers with spare room behind append()'s views

    def append(self, layer_idx: int, name: str, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``cache[layer_idx][name] = cat([cache[layer_idx][name], x], dim)`` in amortised O(len(x)).

        The stored tensor is a view of the first rows of a buffer with spare room along ``dim`` that grows by
        doubling, so a decode step writes its one new key instead of copying the whole cache (a copy of the
        cache per token was most of a decode step at a few thousand tokens). Views handed out earlier stay
        valid: only rows past them are written. Anything that replaces the tensor (``reorder_cache``, a mixer
        assigning its own) just makes the next append start a new buffer. Returns the new tensor."""
        state = self.layers[layer_idx]
        old = state.get(name)
        if old is None:
            state[name] = x.contiguous()
            return state[name]
        dim = dim % old.dim()
        n, m = old.shape[dim], x.shape[dim]
        room = self._room.get((layer_idx, name))
        if room is None or not _is_leading_view(old, room, dim) or room.shape[dim] < n + m:
            shape = list(old.shape)
            shape[dim] = max(2 * (n + m), 64)
            room = old.new_empty(shape)
            room.narrow(dim, 0, n).copy_(old)
            self._room[(layer_idx, name)] = room
        room.narrow(dim, n, m).copy_(x)
        state[name] = room.narrow(dim, 0, n + m)
        return state[name]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer_idx: int) -> dict[str, torch.Tensor]:
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0):
        return None

    def _map(self, fn) -> None:
        self._room.clear()  # the mapped tensors are new: drop the old buffers
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
        """Bytes of the cached tensors (the rows in use; not append()'s spare room), for recall-vs-state-size
        plots."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())


def _is_leading_view(t: torch.Tensor, room: torch.Tensor, dim: int) -> bool:
    """Is ``t`` exactly ``room.narrow(dim, 0, t.shape[dim])`` (same storage, start, strides, other sizes)?"""
    return (t.dim() == room.dim() and t.data_ptr() == room.data_ptr() and t.dtype == room.dtype
            and t.device == room.device and t.stride() == room.stride()
            and all(a == b for i, (a, b) in enumerate(zip(t.shape, room.shape)) if i != dim))
