"""Byte-level language modelling: enwik8 and any corpus of text files, scored in bits per byte.

- :mod:`.corpus`: the bytes on disk (raw file, zip, folder of files) as one memory-mapped array and its splits;
- :mod:`.windows`: training windows, and the in-order evaluation batches (segments that carry the model's state,
  or sliding windows);
- :mod:`.scoring`: the model call, bits per byte as sums with a confidence interval, a scoring loop;
- :mod:`.baselines`: ``lzma`` and an add-one-smoothed byte n-gram, for the same splits.
"""

from .baselines import lzma_bpb, ngram_bpb
from .corpus import ENWIK8_SIZE, ENWIK8_SPLIT, ByteCorpus, fraction_split, open_byte_corpus, open_enwik8
from .scoring import bpb_sums, carries_state, finalize_bpb, lm_forward, lm_loss, score_bytes
from .windows import IGNORE_INDEX, CarryBatches, TrainWindows, WindowBatches, collate_windows

__all__ = ["ENWIK8_SIZE", "ENWIK8_SPLIT", "IGNORE_INDEX", "ByteCorpus", "CarryBatches", "TrainWindows",
           "WindowBatches", "bpb_sums", "carries_state", "collate_windows", "finalize_bpb", "fraction_split",
           "lm_forward", "lm_loss", "lzma_bpb", "ngram_bpb", "open_byte_corpus", "open_enwik8", "score_bytes"]
