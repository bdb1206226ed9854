"""SparkConfig: Spark Transformer (You et al., "Spark Transformer: Reactivating Sparsity in FFN and Attention",
NeurIPS 2025, arXiv 2506.06644): a Gemma-like decoder whose FFN computes about 8% of its neurons per token and
whose attention lets each query attend to at most about 256 keys, both chosen by statistical top-k from a
slice of the layer's own dims (no extra parameters).

The preset (``sparsity``): ``"both"`` (every layer ``spark_attention`` + ``spark_ffn``), ``"ffn"`` (dense softmax
``attention`` + ``spark_ffn``) or ``"attention"`` (``spark_attention`` + the dense ``swiglu`` FFN), so the two
kinds of sparsity can be measured apart. The fields below are forwarded to the settings of those layer types
(``SparkAttentionSettings`` / ``SparkFFNSettings`` in modeling_spark.py).
"""

from __future__ import annotations

from ...common import ConfigError
from ..base import ZooConfig

SPARSITY_PRESETS = ("both", "ffn", "attention")


class SparkConfig(ZooConfig):
    model_type = "spark"
    default_mixer = "spark_attention"

    def __init__(
        self,
        sparsity: str = "both",  # which halves are sparse: "both", "ffn" (dense attention) or "attention"
        num_kv_heads: int | None = None,  # grouped-query attention; None: as many as num_heads
        rope_theta: float = 10000.0,  # rotary base
        attn_predictor_dims: int | None = None,  # r of the attention: head dims that score keys; None: head_dim/2
        attn_top_k: int = 256,  # about how many keys a query attends to (paper: 256)
        ffn_predictor_dims: int | None = None,  # r of the FFN: input dims that feed the predictor; None: hidden/2
        ffn_kept_fraction: float = 0.08,  # fraction of FFN neurons kept per token (paper: 8%)
        sparse_ffn_max_tokens: int = 8,  # without gradients, inputs of at most this many tokens take the
                                         # gather path (decoding); larger ones the masked dense path
        kernel_backend: str = "auto",  # seqzoo.kernels backend for the Spark ops: auto | triton | torch | reference
        **kwargs,
    ):
        sparsity = self.check_field("sparsity", sparsity)
        if sparsity not in SPARSITY_PRESETS:
            raise ConfigError(f"SparkConfig.sparsity: expected one of {SPARSITY_PRESETS}, got {sparsity!r}")
        self.sparsity = sparsity
        self.forward_settings(
            "spark_attention",
            dict(num_kv_heads=num_kv_heads, rope_theta=rope_theta, predictor_dims=attn_predictor_dims,
                 top_k=attn_top_k, kernel_backend=kernel_backend),
            {"predictor_dims": "attn_predictor_dims", "top_k": "attn_top_k"},
        )
        self.forward_settings("attention", dict(num_kv_heads=num_kv_heads, rope_theta=rope_theta))
        self.forward_settings(
            "spark_ffn",
            dict(predictor_dims=ffn_predictor_dims, kept_fraction=ffn_kept_fraction,
                 sparse_max_tokens=sparse_ffn_max_tokens, kernel_backend=kernel_backend),
            {"predictor_dims": "ffn_predictor_dims", "kept_fraction": "ffn_kept_fraction",
             "sparse_max_tokens": "sparse_ffn_max_tokens"},
        )
        kwargs.setdefault("mlp_type", "swiglu" if sparsity == "attention" else "spark_ffn")
        super().__init__(**kwargs)

    def default_layers(self) -> list:
        mixer = "attention" if self.sparsity == "ffn" else "spark_attention"
        return [{"mixer": mixer}] * self.num_hidden_layers
