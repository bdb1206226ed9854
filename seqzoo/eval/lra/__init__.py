"""Long Range Arena (Tay et al., arXiv 2011.04006): ListOps, Text, Retrieval, Image, Pathfinder and Path-X.

Data side, one module per task: :mod:`.listops` (seeded reimplementation of LRA's generator + the released TSV
files), :mod:`.text` (IMDB bytes, local folder or hub), :mod:`.retrieval` (AAN pairs), :mod:`.image` (CIFAR-10
grayscale, local batches or hub), :mod:`.pathfinder` (released folders + a seeded Pathfinder-style generator).
See ``README.md`` beside this file.
"""

from __future__ import annotations

from ._common import MissingDataError

__all__ = ["MissingDataError"]
