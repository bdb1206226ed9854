"""Train a seqzoo model: ``python train.py CONFIG.yaml [section.field=value ...]``.

Thin entry point; the loop is ``seqzoo.trainer`` (also installed as ``seqzoo-train``). Works under
``accelerate launch`` unchanged. See docs/training.md.
"""

from seqzoo.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())
