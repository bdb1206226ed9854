"""Encoder options for any mixer: run it in both directions (``bidirectional: true``), and a learned CLS token
(``classifier_pooling: cls``).

Bidirectional. Classification benchmarks such as LRA read the whole sequence before answering, and their
encoders are bidirectional; most seqzoo mixers are causal. With ``config.bidirectional`` every layer's mixer is
wrapped in :class:`BidirectionalMixer`: the mixer as built (the forward direction) plus a second instance of the
same type and settings with its own weights, run on every sequence reversed; the two outputs are added
(``y = M_fwd(x) + rev(M_bwd(rev(x)))``, as bidirectional Mamba / Vim and Hydra's "add" variant do). The
reversal is padding-aware: each row's *real* tokens are reversed among themselves and pads stay where they
are, so the backward mixer sees a sequence padded exactly like the forward one (same attention mask, same
position ids), and packed rows (``cu_seqlens``) are reversed segment by segment. A bidirectional model has no
decoding cache (the backward pass needs the future), so a call with a cache is an error. A mixer that is
already non-causal (TransNormer with ``causal=False``) needs no wrapper.

CLS. ``classifier_pooling: cls`` prepends one learned vector to the embeddings of every sequence (LRA's
encoders do the same) and classifies from the final hidden state at that position. That position sees the
rest of the sequence only in a bidirectional model: with a causal model it reads the CLS vector alone, so use
``cls`` with ``bidirectional: true`` (``last`` is the causal counterpart).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def reverse_index(batch: int, seq_len: int, device, attention_mask: torch.Tensor | None = None,
                  cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T]`` long: position ``t`` of the reversed batch takes position ``index[b, t]`` of the input. The
    real tokens of each row (or each packed segment) are reversed among themselves, pads map to themselves.
    The map is its own inverse."""
    t = torch.arange(seq_len, device=device)
    if cu_seqlens is not None:  # packed, B = 1: reverse inside each segment [cu[i], cu[i + 1])
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        seg = torch.bucketize(t, cu[1:], right=True).clamp(max=len(cu) - 2)  # [T] segment of each position
        inside = t < cu[-1]
        return torch.where(inside, cu[seg] + cu[seg + 1] - 1 - t, t)[None].expand(batch, seq_len)
    if attention_mask is None:
        return (seq_len - 1 - t)[None].expand(batch, seq_len)
    real = attention_mask[:, -seq_len:].bool()  # [B, T]
    count = real.sum(1, keepdim=True)  # [B, 1]
    rank = real.long().cumsum(1) - 1  # [B, T] rank of each real token among its row's real tokens
    # positions of the real tokens in order, pads after them: sort on t for real tokens and T + t for pads
    order = torch.argsort(torch.where(real, t, seq_len + t), dim=1)  # [B, T]
    source = order.gather(1, (count - 1 - rank).clamp(min=0))  # [B, T] the real token of the mirrored rank
    return torch.where(real, source, t[None])


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, ...] re-ordered along T by ``index`` [B, T]."""
    shape = index.shape + (1,) * (x.dim() - 2)
    return x.gather(1, index.reshape(shape).expand(*index.shape, *x.shape[2:]))


class BidirectionalMixer(nn.Module):
    """A mixer run forward and, with its own weights, on the reversed sequence; outputs added."""

    def __init__(self, forward_mixer: nn.Module, backward_mixer: nn.Module):
        super().__init__()
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        if cache is not None:
            raise ValueError("a bidirectional model (config.bidirectional=True) has no decoding cache: the "
                             "backward direction reads the future; call it with use_cache=False")
        B, T = hidden_states.shape[:2]
        out = self.forward_mixer(hidden_states, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                                 position_ids=position_ids)
        index = reverse_index(B, T, hidden_states.device, attention_mask, cu_seqlens)  # [B, T]
        back = self.backward_mixer(take(hidden_states, index), attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                                   position_ids=position_ids)
        return out + take(back, index)  # the reversal is its own inverse


def make_bidirectional(layers: nn.ModuleList, config) -> None:
    """Wrap the mixer of every block in :class:`BidirectionalMixer` (called by the backbone before its weights
    are initialized, so the backward copies are initialized like any mixer)."""
    for block in layers:
        if isinstance(block.mixer, BidirectionalMixer):
            continue
        backward = type(block.mixer)(config, block.layer_idx, block.mixer_settings)
        block.mixer = BidirectionalMixer(block.mixer, backward)


class ClsToken(nn.Module):
    """A learned vector put in front of every sequence's embeddings (``classifier_pooling: cls``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def zoo_init_weights(self, init) -> None:  # called by ZooPreTrainedModel._init_weights
        init.normal_(self.weight, mean=0.0, std=0.02)

    def prepend(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None):
        """``[B, T, H]`` -> ``[B, 1 + T, H]``, and the mask with a 1 in front (None stays None)."""
        B = embeds.shape[0]
        cls = self.weight.to(embeds.dtype)[None, None].expand(B, 1, -1)  # [B, 1, H]
        embeds = torch.cat([cls, embeds], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, 1), attention_mask], dim=1)
        return embeds, attention_mask


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``[B, T, hidden]`` -> ``[B, hidden]``: ``mean`` over real tokens, the ``last`` real token (left or right
    padding), or the first position (``cls``, where :class:`ClsToken` put its vector)."""
    if pooling == "cls":
        return hidden[:, 0]
    B, T, _ = hidden.shape
    if attention_mask is None:
        return hidden.mean(dim=1) if pooling == "mean" else hidden[:, -1]
    mask = attention_mask[:, -T:].to(hidden.dtype)  # [B, T]
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    last = (mask * torch.arange(1, T + 1, device=hidden.device, dtype=hidden.dtype)).argmax(dim=1)
    return hidden[torch.arange(B, device=hidden.device), last]
