"""TCNCA's mixer (``tcnca``) and the thin model classes: MEGA's gated attention block (``GatedAttention`` in
``mega/modeling_mega.py``) with its damped EMA replaced by a dilated temporal convolutional network
(``seqzoo.kernels.dilated_conv``): O(T) and a receptive field set by the settings, where the EMA's FFT is
O(T log T) (Terzić et al., arXiv 2312.05605).

The TCN's hyperparameters are not published; the defaults and their reasons:

- ``kernel_size = 4`` and ``dilation_base = 4``: with K = base every lag below ``K**depth`` is reached by exactly
  one path of taps (a base-K digit per level), so the receptive field has no holes and no double counting;
  K = 4 is also about the cheapest K for a given receptive field (cost ∝ K · log_K(RF)).
- ``depth = 6``: receptive field 4096 tokens, twice MEGA's LM chunk (2048), in 24 multiply-adds per token and
  channel.
- ``tcn_activation = "silu"`` between levels (MEGA's nonlinearity throughout) and ``tcn_residual = True``
  (each level adds to its input, so a deep stack starts near the identity and trains stably).
- depthwise (one kernel per channel, no channel mixing): channels are mixed by the block's projections, as
  after MEGA's EMA.
- ``chunk_size = 128`` for the attention (the setting shared with ``mega``; MEGA's LM uses 2048).

Bidirectional (``causal=False``): a second TCN runs over the reversed sequence and the two add, as MEGA's
bidirectional EMA. Decoding keeps the TCN's history as a ring buffer (``state_to_ring``) and its position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...kernels import dilated_conv
from ...kernels.dilated_conv import dilated_conv_step, ring_to_state, state_size, state_to_ring
from ..base import ZooForCausalLM, ZooForSequenceClassification, ZooModel, padding, register_mixer
from ..mega.modeling_mega import GatedAttention, GatedAttentionSettings
from .configuration_tcnca import TcncaConfig

TCN_ACTIVATIONS = ("silu", "gelu", "relu", "none")


@dataclass
class TcncaSettings(GatedAttentionSettings):
    kernel_size: int = 4  # K: taps per TCN level (K = dilation_base tiles the receptive field exactly)
    dilation_base: int = 4  # level l has dilation dilation_base**l
    depth: int = 6  # TCN levels; receptive field 1 + (K-1)(base**depth - 1)/(base-1) = 4096 by default
    tcn_activation: str = "silu"  # between TCN levels: silu | gelu | relu | none
    tcn_residual: bool = True  # each level adds its input: h_{l+1} = h_l + act(conv_l(h_l))

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "kernel_size", "dilation_base", "depth")
        self.require_choice(where, "tcn_activation", TCN_ACTIVATIONS)


@register_mixer("tcnca", settings=TcncaSettings)
class TcncaMixer(GatedAttention):
    def __init__(self, config, layer_idx: int, settings: TcncaSettings):
        super().__init__(config, layer_idx, settings)
        D, L, K = config.hidden_size, settings.depth, settings.kernel_size
        dirs = 1 if settings.causal else 2
        self.tcn_weight = nn.Parameter(torch.empty(dirs, L, D, K))  # [directions, levels, channels, taps]
        self.tcn_bias = nn.Parameter(torch.zeros(dirs, L, D))
        with torch.no_grad():
            self.tcn_weight.uniform_(-K ** -0.5, K ** -0.5)
        self.activation = None if settings.tcn_activation == "none" else settings.tcn_activation
        self.receptive_field = 1 + state_size(L, K, settings.dilation_base)

    def init_context(self, init) -> None:
        K = self.settings.kernel_size
        init.uniform_(self.tcn_weight, -K ** -0.5, K ** -0.5)  # conv fan-in init (as ShortConvolution)
        init.zeros_(self.tcn_bias)

    @staticmethod
    def state_size(config, settings) -> int:
        z = settings.z_dim or max(16, config.hidden_size // 4)
        h = settings.v_dim or 2 * config.hidden_size
        chunk = settings.chunk_size or config.max_position_embeddings
        tcn = config.hidden_size * state_size(settings.depth, settings.kernel_size, settings.dilation_base)
        return tcn + chunk * (z + h)  # TCN history + one chunk of k, v

    def _tcn(self, x, direction, **kw):
        return dilated_conv(x, self.tcn_weight[direction], self.tcn_bias[direction],
                            dilation_base=self.settings.dilation_base, activation=self.activation,
                            residual=self.settings.tcn_residual, backend=self.settings.kernel_backend, **kw)

    def _context(self, x, mask, state, cu_seqlens):
        if state is None:
            packed = padding.pack(mask) if mask is not None and cu_seqlens is None else None
            xs = packed.pack(x) if packed is not None else x
            cu = packed.cu_seqlens if packed is not None else cu_seqlens
            y, _ = self._tcn(xs, 0, cu_seqlens=cu)
            if not self.settings.causal:  # the reversed sequence(s): flip time, and the packing with it
                cu_rev = None if cu is None else (xs.shape[1] - cu.flip(0))
                y = y + self._tcn(xs.flip(1), 1, cu_seqlens=cu_rev)[0].flip(1)
            return packed.unpack(y) if packed is not None else y
        return self._cached(x, mask, state)

    def _cached(self, x, mask, state):
        B, T, D = x.shape
        K, base = self.settings.kernel_size, self.settings.dilation_base
        ring, pos = state.get("ring"), state.get("pos")
        kw = dict(dilation_base=base, activation=self.activation, residual=self.settings.tcn_residual)
        if ring is not None and T == 1 and mask is None:  # decoding: one slot per level of the ring buffer
            y = dilated_conv_step(x[:, 0], self.tcn_weight[0], self.tcn_bias[0], ring, pos, **kw)
            state["pos"] = pos + 1
            return y[:, None]
        real = mask if mask is not None else torch.ones(B, T, device=x.device)
        packed = padding.pack(real)
        if pos is None:
            pos = torch.zeros(B, dtype=torch.long, device=x.device)
        window = ring_to_state(ring, pos, K, base) if ring is not None else None  # [B, D, S] oldest first
        y, final = self._tcn(packed.pack(x), 0, initial_state=window, output_final_state=True,
                             cu_seqlens=packed.cu_seqlens)
        pos = pos + real.long().sum(1)
        state["ring"], state["pos"] = state_to_ring(final, pos, K, base), pos
        return packed.unpack(y)


class TcncaModel(ZooModel):
    config_class = TcncaConfig


class TcncaForCausalLM(ZooForCausalLM):
    config_class = TcncaConfig


class TcncaForSequenceClassification(ZooForSequenceClassification):
    config_class = TcncaConfig
