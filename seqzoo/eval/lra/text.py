"""LRA Text: IMDB sentiment at the byte level (Maas et al. 2011). Each review is its UTF-8 bytes, the first
``max_length`` of them (LRA: 4K; S4 and MEGA use 4096), ids 0..255; the label is 1 for a positive review.

Splits as in LRA's code: train = IMDB train (25,000), valid = test = IMDB test (25,000).

Sources:

- ``data_dir``: the ``aclImdb`` folder of the Stanford release (``aclImdb_v1.tar.gz`` from
  https://ai.stanford.edu/~amaas/data/sentiment/): ``{train,test}/{pos,neg}/*.txt``, one review per file; files
  are read in sorted order (``neg`` first);
- the hub dataset ``stanfordnlp/imdb`` through ``datasets.load_dataset`` (``text``, ``label``), used when
  ``data_dir`` is null (needs the network once, or a copy in the ``datasets`` cache).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...common import ConfigError
from ._common import MissingDataError, check_split, encode_bytes, require_dir

HUB_DATASET = "stanfordnlp/imdb"
HOW_TO_GET = (f"Point task.data_dir at the aclImdb folder of aclImdb_v1.tar.gz "
              f"(https://ai.stanford.edu/~amaas/data/sentiment/), holding train/ and test/ with pos/ and neg/ "
              f"folders of .txt reviews; or set task.data_dir null to load the hub dataset {HUB_DATASET!r}")
IMDB_SPLIT = {"train": "train", "valid": "test", "test": "test"}  # LRA evaluates on IMDB test twice


def read_imdb_folder(root: str | Path, split: str, max_length: int) -> dict:
    """One split of an ``aclImdb`` folder: ``{"input_ids": [...], "labels": [...]}``."""
    part = IMDB_SPLIT[check_split(split)]
    root = require_dir(Path(root), "task.data_dir", HOW_TO_GET)
    ids, labels = [], []
    for label, sentiment in ((0, "neg"), (1, "pos")):
        folder = require_dir(root / part / sentiment, f"IMDB {part}/{sentiment}", HOW_TO_GET)
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise MissingDataError(f"IMDB {part}/{sentiment}: no .txt files in {str(folder)!r}. {HOW_TO_GET}")
        for f in files:
            ids.append(encode_bytes(f.read_bytes(), max_length))
            labels.append(label)
    return {"input_ids": ids, "labels": labels}


def imdb_from_rows(texts, labels, max_length: int) -> dict:
    """Columns from the hub dataset's ``text`` / ``label`` columns."""
    out_labels = [int(x) for x in labels]
    bad = sorted({x for x in out_labels if x not in (0, 1)})
    if bad:
        raise ValueError(f"IMDB: labels must be 0 or 1, got {bad[:5]} (the hub's 'unsupervised' split has -1)")
    return {"input_ids": [encode_bytes(t, max_length) for t in texts], "labels": out_labels}


def load_imdb_hub(split: str, max_length: int, name: str = HUB_DATASET) -> dict:
    import datasets

    part = IMDB_SPLIT[check_split(split)]
    try:
        ds = datasets.load_dataset(name, split=part)
    except Exception as e:  # offline, unknown name, ...
        raise MissingDataError(f"IMDB: could not load the hub dataset {name!r} (split {part!r}): "
                               f"{type(e).__name__}: {e}. {HOW_TO_GET}") from e
    return imdb_from_rows(ds["text"], ds["label"], max_length)


def check_max_length(value: int, where: str = "task.max_length") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: expected a positive number of bytes, got {value!r}")


__all__ = ["HUB_DATASET", "imdb_from_rows", "load_imdb_hub", "read_imdb_folder"]
