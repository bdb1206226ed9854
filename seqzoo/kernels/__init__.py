"""The public ops. Each takes ``backend="auto" | "triton" | "torch" | "reference"`` (see ``_backend.py``)."""

from .rms_norm import rms_norm

__all__ = ["rms_norm"]
