"""Long Range Arena (Tay et al., arXiv 2011.04006): ListOps, Text, Retrieval, Image, Pathfinder and Path-X.

Data side, one module per task: :mod:`.listops` (seeded reimplementation of LRA's generator + the released TSV
files), :mod:`.text` (IMDB bytes, local folder or hub), :mod:`.retrieval` (AAN pairs), :mod:`.image` (CIFAR-10
grayscale, local batches or hub), :mod:`.pathfinder` (released folders + a seeded Pathfinder-style generator).
The registered tasks (``lra_listops``, ``lra_text``, ``lra_retrieval``, ``lra_image``, ``lra_pathfinder``,
``lra_pathx``) and the ``lra-pair`` head are in :mod:`.tasks`; ``python -m seqzoo.eval.lra --runs runs/lra`` makes
the table (:mod:`.table`). See ``README.md`` beside this file.
"""

from __future__ import annotations

from .. import register_task
from ._common import MissingDataError
from .tasks import (LRA_TASKS, DualEncoderClassifier, ImageTask, ListOpsTask, PairClassificationHead, PathfinderTask,
                    PathXTask, RetrievalTask, TextTask)

for _task in LRA_TASKS:
    register_task(_task)

__all__ = ["LRA_TASKS", "DualEncoderClassifier", "ImageTask", "ListOpsTask", "MissingDataError",
           "PairClassificationHead", "PathXTask", "PathfinderTask", "RetrievalTask", "TextTask"]
