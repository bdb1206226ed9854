"""The public ops. Each takes ``backend="auto" | "triton" | "torch" | "reference"`` (see ``_backend.py``)."""

from .block_attention import block_attention
from .delta_rule import delta_rule
from .dilated_conv import dilated_conv
from .ema import ema
from .linear_attention import linear_attention
from .rms_norm import rms_norm
from .selective_scan import selective_scan
from .sparse_ffn import sparse_ffn
from .spark_attention import spark_attention
from .ssd import ssd_scan
from .statistical_topk import statistical_topk

__all__ = ["block_attention", "delta_rule", "dilated_conv", "ema", "linear_attention", "rms_norm", "spark_attention",
           "sparse_ffn", "ssd_scan", "statistical_topk"]
