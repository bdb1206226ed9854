"""MegaConfig: MEGA (Ma et al., "Mega: Moving Average Equipped Gated Attention", ICLR 2023, arXiv 2209.10655).

Every layer a ``mega`` mixer (moving-average gated attention; settings ``MegaSettings`` in modeling_mega.py)
and MEGA's normalized FFN (``mega_ffn``). The fields below are forwarded to the mixer's settings.

Presets (``MegaConfig.from_preset(name, **overrides)``) from MEGA's released configs (REFERENCE.md "MEGA"):
``enwik8`` (12 layers, D 512, v 1024, z 128, chunk 2048, causal) and the LRA encoders ``listops``, ``text``,
``retrieval``, ``image``, ``pathfinder``, ``pathx`` (bidirectional: ``causal=False``); image, pathfinder and
path-x use MEGA's laplace attention, the others softmax.
"""

from __future__ import annotations

from ..base import ZooConfig

# (layers, D, z, v, chunk, ffn width, attention) of MEGA's released configs; chunk 0 = full attention
SIZES = {
    "enwik8": (12, 512, 128, 1024, 2048, 1024, "softmax"),
    "listops": (6, 80, 64, 160, 0, 160, "softmax"),
    "text": (4, 128, 64, 256, 0, 256, "softmax"),
    "retrieval": (6, 128, 64, 256, 0, 256, "softmax"),
    "image": (8, 160, 96, 320, 1024, 320, "laplace"),
    "pathfinder": (6, 128, 64, 256, 1024, 256, "laplace"),
    "pathx": (4, 64, 32, 128, 16384, 128, "laplace"),
}


def preset_fields(name: str, owner: str) -> dict:
    if name not in SIZES:
        raise ValueError(f"{owner}: preset must be one of {tuple(SIZES)}, got {name!r}")
    layers, d, z, v, chunk, ffn, attention = SIZES[name]
    return dict(num_hidden_layers=layers, hidden_size=d, z_dim=z, v_dim=v, chunk_size=chunk, intermediate_size=ffn,
                attention=attention, causal=name == "enwik8")


class MegaConfig(ZooConfig):
    model_type = "mega"  # transformers 5 no longer ships its own MEGA, so the name is free (test_registry checks)
    default_mixer = "mega"

    def __init__(
        self,
        z_dim: int | None = None,  # shared q/k dim; None: hidden_size // 4 (at least 16)
        v_dim: int | None = None,  # value dim; None: 2 * hidden_size
        ndim: int = 16,  # EMA expansion N (16 in every MEGA config)
        chunk_size: int = 128,  # attention inside chunks of this many tokens; 0 = full attention
        attention: str = "softmax",  # softmax | laplace (MEGA's LRA image / pathfinder / path-x)
        rotary: bool = True,  # rotary relative positions on q, k
        rope_theta: float = 10000.0,
        causal: bool = True,  # False: bidirectional EMA and attention (classification); no generation
        kernel_backend: str = "auto",  # block_attention backend
        ema_backend: str = "auto",  # seqzoo.kernels.ema path: auto (= fft) | fft | scan | reference
        mlp_type: str = "mega_ffn",  # MEGA's normalized FFN
        **kwargs,
    ):
        causal = self.check_field("causal", causal)
        self.forward_settings("mega", dict(z_dim=z_dim, v_dim=v_dim, ndim=ndim, chunk_size=chunk_size,
                                           attention=attention, rotary=rotary, rope_theta=rope_theta, causal=causal,
                                           kernel_backend=kernel_backend, ema_backend=ema_backend))
        kwargs.setdefault("use_cache", causal)
        super().__init__(mlp_type=mlp_type, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MegaConfig":
        """One of ``SIZES``' names; any field can be overridden."""
        return cls(**{**preset_fields(name, cls.__name__), **overrides})
