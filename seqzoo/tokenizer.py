"""ByteTokenizer: the 256 UTF-8 byte values as ids 0..255, then <pad> = 256, <bos> = 257, <eos> = 258.

A transformers tokenizer (Python backend) with nothing to learn and no vocabulary file: it saves as a
``tokenizer_config.json`` and loads with ``AutoTokenizer.from_pretrained`` next to any seqzoo checkpoint,
so ``pipeline("text-generation", model=path)`` works for byte-level models (EnWik8, LRA text).
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizer

NUM_BYTES = 256
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_IDS = {PAD: 256, BOS: 257, EOS: 258}
VOCAB_SIZE = NUM_BYTES + len(SPECIAL_IDS)


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


class ByteTokenizer(PreTrainedTokenizer):
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, add_bos_token: bool = False, add_eos_token: bool = False, **kwargs):
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self._byte_of_token = {_byte_token(b): b for b in range(NUM_BYTES)}
        kwargs.pop("pad_token", None), kwargs.pop("bos_token", None), kwargs.pop("eos_token", None)
        kwargs.setdefault("auto_map", {"AutoTokenizer": ["seqzoo_remote.ByteTokenizer", None]})
        # text is bytes, always: a literal "<pad>" in the input is five bytes, never the pad id
        kwargs.setdefault("split_special_tokens", True)
        super().__init__(pad_token=PAD, bos_token=BOS, eos_token=EOS, **kwargs)

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        vocab = {_byte_token(b): b for b in range(NUM_BYTES)}
        vocab.update(SPECIAL_IDS)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [_byte_token(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in SPECIAL_IDS:
            return SPECIAL_IDS[token]
        if token in self._byte_of_token:
            return self._byte_of_token[token]
        raise ValueError(f"ByteTokenizer: unknown token {token!r}; tokens are <0xNN> bytes, {PAD}, {BOS}, {EOS}")

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < NUM_BYTES:
            return _byte_token(index)
        for tok, i in SPECIAL_IDS.items():
            if i == index:
                return tok
        raise ValueError(f"ByteTokenizer: id {index} is outside the vocabulary [0, {VOCAB_SIZE})")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray()
        for tok in tokens:
            if tok in self._byte_of_token:
                data.append(self._byte_of_token[tok])
            elif tok not in SPECIAL_IDS:
                data.extend(tok.encode("utf-8"))
        return data.decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = list(token_ids_0) + (list(token_ids_1) if token_ids_1 is not None else [])
        if self.add_bos_token:
            ids = [SPECIAL_IDS[BOS]] + ids
        if self.add_eos_token:
            ids = ids + [SPECIAL_IDS[EOS]]
        return ids

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is the 256 byte values: nothing to write

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoTokenizer"):
        """No-op: seqzoo writes its own ``auto_map`` and ``seqzoo_remote.py`` shim. transformers calls this after
        a ``trust_remote_code`` load, and would then try to copy this class's source file on the next save."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        from .architectures.base.registry import write_remote_shim
        from .common import staged_directory

        if args or kwargs.get("push_to_hub"):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_remote_shim(save_directory)
            return out
        target = os.path.abspath(os.fspath(save_directory))
        with staged_directory(target) as folder:
            out = super().save_pretrained(folder, **kwargs)
            write_remote_shim(folder)
        return tuple(os.path.join(target, os.path.relpath(str(f), folder)) for f in out)
