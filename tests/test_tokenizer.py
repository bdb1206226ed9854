"""The byte-level tokenizer: exact round trips, special ids, save/load with a model, text-generation pipeline."""

import pytest
import torch
from transformers import AutoTokenizer, pipeline

import seqzoo
from seqzoo.tokenizer import VOCAB_SIZE, ByteTokenizer

from .architectures import common


def test_round_trip_is_exact_for_any_utf8():
    tok = ByteTokenizer()
    for text in ["", "plain ascii", "héllo wörld — ✓ 日本語", "\r\n\t<xml attr='1'/>", "<pad> is text here"]:
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_special_tokens_and_vocab():
    tok = ByteTokenizer(add_bos_token=True, add_eos_token=True)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    assert len(tok) == VOCAB_SIZE == 259
    assert tok("ab")["input_ids"] == [257, 97, 98, 258]
    assert tok.decode([257, 97, 98, 258], skip_special_tokens=True) == "ab"
    batch = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[257, 97, 258, 256, 256], [257, 97, 98, 99, 258]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens(400)


def test_saves_and_loads_with_the_model_and_runs_in_a_pipeline(tmp_path):
    model = common.tiny_lm("transformer", hidden_size=32, num_hidden_layers=2, num_heads=2)
    path = tmp_path / "byte-lm"
    model.save_pretrained(path)
    ByteTokenizer().save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(tok, ByteTokenizer)
    gen = pipeline("text-generation", model=str(path))
    out = gen("abc", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert out.startswith("abc")
    with torch.no_grad():  # the pipeline's continuation is the model's greedy continuation
        ids = torch.tensor([tok("abc")["input_ids"]])
        greedy = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out == tok.decode(greedy[0], skip_special_tokens=True)
    assert seqzoo.ByteTokenizer is ByteTokenizer
