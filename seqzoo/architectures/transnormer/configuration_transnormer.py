"""TransNormerConfig: TransNormer ("The Devil in Linear Transformer", Qin et al., EMNLP 2022, arXiv 2210.10340).

Two mixers: ``diag_attention`` (softmax or ReLU attention inside non-overlapping blocks of ``block_size``
tokens) in the first ``num_diag_layers`` layers (default: the first half, as in the paper), and
``norm_attention`` (linear attention without denominator or ``1/√d``, RMSNorm on the output) in the rest. Any
other arrangement is a ``mixer_pattern`` (e.g. ``["norm_attention", "diag_attention"]``).

Presets (``TransNormerConfig.from_preset("t1" | "t2", **overrides)``), from the paper:
T1: ``feature_map="elu"``, ReLA (``diag_activation="relu"``) in the blocks; T2: ``feature_map="1+elu"``,
softmax in the blocks. Both: w = 64, GLU FFN, Diag in the first half. ``use_decay=True`` adds
TransNormerLLM's fixed per-head decay (ALiBi-like slopes, weaker in deeper layers).
"""

from __future__ import annotations

from ..base import ZooConfig

# The paper's language-model setting (WikiText-103, ~156M params with its 50k vocabulary): 12 layers
# (6 Diag + 6 Norm), width 512, 8 heads, block 64, GLU FFN. Vocabulary follows the task (bytes here).
_PAPER_SIZE = dict(hidden_size=512, num_hidden_layers=12, num_heads=8, block_size=64, mlp_type="glu")
PRESETS = {
    "t1": dict(_PAPER_SIZE, feature_map="elu", diag_activation="relu"),
    "t2": dict(_PAPER_SIZE, feature_map="1+elu", diag_activation="softmax"),
}


class TransNormerConfig(ZooConfig):
    model_type = "transnormer"
    default_mixer = "norm_attention"

    def __init__(
        self,
        feature_map: str = "1+elu",  # phi on q and k of NormAttention (T1: "elu", T2: "1+elu")
        diag_activation: str = "softmax",  # DiagAttention weights (T1: "relu" = ReLA, T2: "softmax")
        block_size: int = 64,  # DiagAttention block w (paper ablation: 32 / 64 / 128)
        num_diag_layers: int | None = None,  # None: the first half of the layers (the preset; not with layers=)
        use_decay: bool = False,  # TransNormerLLM: S_t = lambda_h S_{t-1} + k_t v_t^T with fixed lambda_h
        use_output_gate: bool = False,  # NormAttention output RMSNorm(o) * silu(W_g x) (TransNormerLLM)
        diag_rotary: bool = True,  # rotary positions on DiagAttention's q, k (paper: none stated; order only
                                   # through the causal mask). A field so the choice is explicit.
        rope_theta: float = 10000.0,  # DiagAttention's rotary base
        causal: bool = True,  # False: bidirectional mixers (classification); no generation then
        mlp_type: str = "glu",  # TransNormer's FFN is a GLU
        **kwargs,
    ):
        causal = self.check_field("causal", causal)
        self.forward_settings("norm_attention", dict(feature_map=feature_map, use_decay=use_decay,
                                                     use_output_gate=use_output_gate, causal=causal))
        self.forward_settings("diag_attention", dict(block_size=block_size, activation=diag_activation,
                                                     rotary=diag_rotary, rope_theta=rope_theta, causal=causal),
                              {"activation": "diag_activation", "rotary": "diag_rotary"})
        self.__dict__["_num_diag_layers"] = self.check_field("num_diag_layers", num_diag_layers)
        kwargs.setdefault("use_cache", causal)  # a bidirectional model has nothing to cache
        try:
            super().__init__(mlp_type=mlp_type, **kwargs)
        finally:
            self.__dict__.pop("_num_diag_layers", None)  # consumed by default_layers(); not a stored field

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransNormerConfig":
        """``"t1"`` or ``"t2"`` with the paper's sizes; any field can be overridden."""
        if name not in PRESETS:
            raise ValueError(f"TransNormerConfig: preset must be one of {tuple(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    def default_layers(self) -> list:
        """Diag in the first ``num_diag_layers`` layers (default: the first half), Norm after."""
        n_diag = self.__dict__.get("_num_diag_layers")
        if n_diag is None:
            n_diag = self.num_hidden_layers // 2
        elif not 0 <= n_diag <= self.num_hidden_layers:
            raise ValueError(
                f"TransNormerConfig.num_diag_layers: must be in [0, num_hidden_layers={self.num_hidden_layers}], "
                f"got {n_diag}"
            )
        return ["diag_attention"] * n_diag + ["norm_attention"] * (self.num_hidden_layers - n_diag)
