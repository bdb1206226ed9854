"""ZooMambaConfig: Mamba (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv 2312.00752), as mamba_ssm's ``Mamba`` block (``modules/mamba_simple.py``). Zoo-: transformers has its own
``MambaConfig`` / ``mamba`` model type.

The preset: every layer a ``mamba`` mixer (settings: ``MambaSettings`` in modeling_mamba.py) and no FFN
(``mlp_type="none"``). The mixer's width is ``expand · hidden_size`` channels; ``num_heads`` and ``head_dim`` do
not apply to it (they remain the model's defaults for other mixers in a hybrid).
"""

from __future__ import annotations

from ..base import ZooConfig


class ZooMambaConfig(ZooConfig):
    model_type = "zoo_mamba"
    default_mixer = "mamba"

    def __init__(
        self,
        expand: int = 2,  # channels D = expand * hidden_size
        state_size: int = 16,  # N, d_state
        conv_size: int = 4,  # depthwise causal conv over x
        dt_rank: int | None = None,  # rank of the Δ projection; None: ceil(hidden_size / 16)
        dt_min: float = 0.001,  # dt_proj.bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] ...
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,  # ... and at least dt_init_floor
        dt_scale: float = 1.0,  # dt_proj.weight ~ U(±dt_scale / sqrt(dt_rank))
        kernel_backend: str = "auto",  # seqzoo.kernels.selective_scan backend: auto | triton | torch | reference
        mlp_type: str = "none",  # Mamba has no FFN
        **kwargs,
    ):
        self.forward_settings("mamba", dict(
            expand=expand, state_size=state_size, conv_size=conv_size, dt_rank=dt_rank, dt_min=dt_min,
            dt_max=dt_max, dt_init_floor=dt_init_floor, dt_scale=dt_scale, kernel_backend=kernel_backend,
        ))
        super().__init__(mlp_type=mlp_type, **kwargs)
