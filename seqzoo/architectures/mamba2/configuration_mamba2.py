"""ZooMamba2Config (Zoo-: transformers has its own Mamba2Config, and Auto classes refuse a second class of
that name): Mamba-2 (Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", ICML 2024, arXiv 2405.21060), as mamba_ssm's ``Mamba2`` block.

The preset: every layer a ``mamba2`` mixer (settings: ``Mamba2Settings`` in modeling_mamba2.py) and no FFN
(``mlp_type="none"``: Mamba-2 stacks mixers only, d_intermediate = 0). The inner width is heads × head_dim;
without ``num_heads`` it is ``2 · hidden_size`` (mamba_ssm's expand = 2) with ``head_dim`` 64 (its headdim); set
``num_heads`` for another width. (No ``expand`` field: that name is the ``mamba`` mixer's setting, and a config
never takes another mixer's fields.) model_type is ``zoo_mamba2``: transformers ships its own ``mamba2``.
"""

from __future__ import annotations

from ...common import ConfigError
from ..base import ZooConfig


class ZooMamba2Config(ZooConfig):
    model_type = "zoo_mamba2"
    default_mixer = "mamba2"

    def __init__(
        self,
        hidden_size: int = 256,
        num_heads: int | None = None,  # SSD heads; None: 2 * hidden_size // head_dim (mamba_ssm's expand 2)
        head_dim: int | None = 64,  # P, mamba_ssm's headdim
        state_size: int = 128,  # N, d_state
        n_groups: int = 1,  # G groups of B and C shared by num_heads / G heads
        conv_size: int = 4,  # depthwise causal conv over x, B, C
        chunk_size: int = 64,  # chunk of the torch SSD path (the result does not depend on it)
        A_init_min: float = 1.0,  # A = -exp(A_log), A_log = log U(A_init_min, A_init_max)
        A_init_max: float = 16.0,
        dt_min: float = 0.001,  # dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] ...
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,  # ... and at least dt_init_floor
        dt_limit_min: float = 0.0,  # clamp of Δ = softplus(dt + dt_bias): (dt_limit_min, dt_limit_max)
        dt_limit_max: float | None = None,  # None: no upper limit
        kernel_backend: str = "auto",  # seqzoo.kernels.ssd_scan backend: auto | triton | torch | reference
        mlp_type: str = "none",  # Mamba-2 has no FFN
        **kwargs,
    ):
        if num_heads is None:
            if head_dim is None or head_dim < 1 or (2 * hidden_size) % head_dim:
                raise ConfigError(f"ZooMamba2Config: 2 * hidden_size = {2 * hidden_size} must be a multiple of "
                                  f"head_dim = {head_dim} when num_heads is not given")
            num_heads = 2 * hidden_size // head_dim
        self.forward_settings("mamba2", dict(
            state_size=state_size, n_groups=n_groups, conv_size=conv_size, chunk_size=chunk_size,
            A_init_min=A_init_min, A_init_max=A_init_max, dt_min=dt_min, dt_max=dt_max,
            dt_init_floor=dt_init_floor, dt_limit_min=dt_limit_min, dt_limit_max=dt_limit_max,
            kernel_backend=kernel_backend,
        ))
        super().__init__(hidden_size=hidden_size, num_heads=num_heads, head_dim=head_dim, mlp_type=mlp_type, **kwargs)
