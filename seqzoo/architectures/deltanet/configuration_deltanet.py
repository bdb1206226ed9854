"""DeltaNetConfig: DeltaNet (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", NeurIPS 2024, arXiv 2406.06484).

The preset: every layer a ``deltanet`` mixer (settings: ``DeltaNetSettings`` in modeling_deltanet.py) with the
model's FFN. The fields below are forwarded to those settings. A hybrid names its layers, e.g.
``layers=["deltanet", {"mixer": {"type": "attention", "num_kv_heads": 1}}]``: the attention layer's settings
travel with it, DeltaNetConfig has none of them.
"""

from __future__ import annotations

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
        **kwargs,
    ):
        self.forward_settings("deltanet", dict(
            use_short_conv=use_short_conv, conv_size=conv_size, allow_neg_eigval=allow_neg_eigval,
            use_output_gate=use_output_gate, kernel_backend=kernel_backend, recurrent_max_len=recurrent_max_len,
        ))
        super().__init__(**kwargs)
