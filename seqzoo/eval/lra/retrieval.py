"""LRA Retrieval: do two ACL Anthology Network (AAN) papers cite one another? Byte-level document pairs, each
document cut to ``max_length`` bytes (LRA: 4000), label 1 or 0.

Released files (``tsv_data/`` of ``lra_release.gz``): ``new_aan_pairs.{train,eval,test}.tsv``, tab-separated,
no header, five fields: label (written as a float, ``1.0``), id1, id2, text1, text2. Quotes are ordinary
characters (LRA reads the files with quoting off), so a line is split on tabs and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from ._common import LRA_RELEASE, check_split, encode_bytes, require_dir, require_file

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "valid": "new_aan_pairs.eval.tsv",
               "test": "new_aan_pairs.test.tsv"}
HOW_TO_GET = (f"Put LRA's new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv and new_aan_pairs.test.tsv there "
              f"(folder tsv_data/ of {LRA_RELEASE}); AAN has no generator and no hub copy here")


def read_aan_tsv(path: str | Path, max_length: int) -> dict:
    """One released AAN file: ``{"input_ids": [...], "input_ids_2": [...], "labels": [...]}``."""
    path = require_file(Path(path), "AAN file", HOW_TO_GET)
    first, second, labels = [], [], []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise ValueError(f"AAN file {str(path)!r} line {line_no}: expected 5 tab-separated fields "
                                 f"(label, id1, id2, text1, text2), got {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                raise ValueError(f"AAN file {str(path)!r} line {line_no}: label {fields[0][:20]!r} is not a "
                                 f"number") from None
            if label not in (0.0, 1.0):
                raise ValueError(f"AAN file {str(path)!r} line {line_no}: label {label}, expected 0 or 1")
            first.append(encode_bytes(fields[3], max_length))
            second.append(encode_bytes(fields[4], max_length))
            labels.append(int(label))
    if not labels:
        raise ValueError(f"AAN file {str(path)!r} holds no examples")
    return {"input_ids": first, "input_ids_2": second, "labels": labels}


def aan_split(data_dir: str | Path | None, split: str, max_length: int) -> dict:
    if data_dir is None:
        from ._common import MissingDataError

        raise MissingDataError(f"lra_retrieval: task.data_dir is null. Set it to a folder with the AAN files. "
                               f"{HOW_TO_GET}")
    folder = require_dir(Path(data_dir), "task.data_dir", HOW_TO_GET)
    return read_aan_tsv(folder / SPLIT_FILES[check_split(split)], max_length)


__all__ = ["SPLIT_FILES", "aan_split", "read_aan_tsv"]
