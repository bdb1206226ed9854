"""TcncaConfig: TCNCA (Terzić et al., "TCNCA: Temporal Convolution Network with Chunked Attention for Scalable
Sequence Processing", arXiv 2312.05605): MEGA with its damped EMA replaced by a dilated TCN.

Every layer a ``tcnca`` mixer (settings ``TcncaSettings`` in modeling_tcnca.py, where the TCN defaults and
their reasons are listed; the paper does not publish them) and MEGA's normalized FFN (``mega_ffn``).
Presets: MEGA's sizes (``seqzoo.architectures.mega.SIZES``: ``enwik8`` and the LRA encoders), since TCNCA's
model sizes are not published either.
"""

from __future__ import annotations

from ..base import ZooConfig
from ..mega.configuration_mega import preset_fields


class TcncaConfig(ZooConfig):
    model_type = "tcnca"
    default_mixer = "tcnca"

    def __init__(
        self,
        z_dim: int | None = None,  # shared q/k dim; None: hidden_size // 4 (at least 16)
        v_dim: int | None = None,  # value dim; None: 2 * hidden_size
        chunk_size: int = 128,  # attention inside chunks of this many tokens; 0 = full attention
        attention: str = "softmax",  # softmax | laplace (MEGA's attention choices)
        kernel_size: int = 4,  # TCN taps per level
        dilation_base: int = 4,  # TCN level l has dilation dilation_base**l
        tcn_depth: int = 6,  # TCN levels (receptive field 4096 with the defaults)
        tcn_activation: str = "silu",  # between TCN levels: silu | gelu | relu | none
        tcn_residual: bool = True,  # residual around every TCN level
        rotary: bool = True,  # rotary relative positions on q, k
        rope_theta: float = 10000.0,
        causal: bool = True,  # False: bidirectional TCN and attention (classification); no generation
        kernel_backend: str = "auto",  # dilated_conv and block_attention backend
        mlp_type: str = "mega_ffn",  # MEGA's normalized FFN
        **kwargs,
    ):
        causal = self.check_field("causal", causal)
        self.forward_settings("tcnca", dict(
            z_dim=z_dim, v_dim=v_dim, chunk_size=chunk_size, attention=attention, kernel_size=kernel_size,
            dilation_base=dilation_base, depth=tcn_depth, tcn_activation=tcn_activation, tcn_residual=tcn_residual, rotary=rotary,
            rope_theta=rope_theta, causal=causal, kernel_backend=kernel_backend), {"depth": "tcn_depth"})
        kwargs.setdefault("use_cache", causal)
        super().__init__(mlp_type=mlp_type, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TcncaConfig":
        """MEGA's sizes (``enwik8``, ``listops``, ``text``, ``retrieval``, ``image``, ``pathfinder``, ``pathx``);
        any field can be overridden."""
        return cls(**{**preset_fields(name, cls.__name__), **overrides})
