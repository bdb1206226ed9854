"""DeltaNetConfig: DeltaNet (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", NeurIPS 2024, arXiv 2406.06484).

Every layer's mixer is ``deltanet`` unless ``mixer_pattern`` says otherwise; a hybrid with softmax attention
in chosen layers is e.g. ``mixer_pattern=["deltanet", "attention"]`` (the attention layers read the
Transformer fields ``num_kv_heads`` / ``rope_theta``, defaults: as many kv heads as heads).
"""

from __future__ import annotations

from ...kernels._backend import BACKENDS
from ..base import ZooConfig


class DeltaNetConfig(ZooConfig):
    model_type = "deltanet"
    default_mixer = "deltanet"

    def __init__(
        self,
        use_short_conv: bool = True,  # causal depthwise conv on q, k, v before the delta rule (paper: on)
        conv_size: int = 4,  # its kernel length
        allow_neg_eigval: bool = False,  # beta = 2 sigmoid(.) in (0, 2): I - beta k k^T may have negative eigenvalues
        use_output_gate: bool = True,  # per-head output RMSNorm(o) * silu(W_g x); False: RMSNorm(o) only
        kernel_backend: str = "auto",  # seqzoo.kernels.delta_rule backend: auto | triton | torch | reference
        recurrent_max_len: int = 64,  # with Triton and no gradients, inputs up to this length (decoding,
                                      # short prompts) use the fused recurrent kernel instead of the chunked one
        num_kv_heads: int | None = None,  # only for "attention" layers of a hybrid (see module docstring)
        **kwargs,
    ):
        self.use_short_conv = bool(use_short_conv)
        self.conv_size = int(conv_size)
        self.allow_neg_eigval = bool(allow_neg_eigval)
        self.use_output_gate = bool(use_output_gate)
        self.kernel_backend = kernel_backend
        self.recurrent_max_len = int(recurrent_max_len)
        self.num_kv_heads = int(num_kv_heads) if num_kv_heads is not None else None
        super().__init__(**kwargs)

    def validate_zoo(self) -> None:
        super().validate_zoo()
        if self.conv_size < 1:
            raise ValueError(f"DeltaNetConfig: conv_size must be >= 1, got {self.conv_size}")
        if self.kernel_backend not in BACKENDS:
            raise ValueError(f"DeltaNetConfig: kernel_backend must be one of {BACKENDS}, got {self.kernel_backend!r}")
        if self.recurrent_max_len < 0:
            raise ValueError(f"DeltaNetConfig: recurrent_max_len must be >= 0, got {self.recurrent_max_len}")
        if self.num_kv_heads is not None and (self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads):
            raise ValueError(
                f"DeltaNetConfig: num_kv_heads ({self.num_kv_heads}) must be positive and divide num_heads "
                f"({self.num_heads})"
            )
