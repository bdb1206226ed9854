"""The public ops. Each takes ``backend="auto" | "triton" | "torch" | "reference"`` (see ``_backend.py``)."""

from .block_attention import block_attention
from .linear_attention import linear_attention
from .rms_norm import rms_norm

__all__ = ["block_attention", "linear_attention", "rms_norm"]
