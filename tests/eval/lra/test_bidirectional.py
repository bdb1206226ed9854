"""The bidirectional option (every mixer also run on the reversed sequence) and CLS pooling, for every
registered mixer: padding-aware reversal, the future reaches the past, padded batches equal unpadded ones."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.base.bidirectional import BidirectionalMixer, reverse_index, take
from seqzoo.architectures.base.spec import MIXERS
from seqzoo.kernels.testing import assert_close

V = 300  # above the byte tokenizer's special ids (256..258), the config defaults
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V)
SMALL_SETTINGS = {"diag_attention": {"block_size": 4}}  # as tests/architectures/test_layers.py


def _config(mixer: str, **fields):
    layer = {"mixer": {"type": mixer, **SMALL_SETTINGS.get(mixer, {})}}
    return seqzoo.make_config("transformer", **TINY, layers=[layer, layer], **fields)


def _reference_index(mask: torch.Tensor) -> torch.Tensor:
    """Loop version: the real positions of each row, reversed among themselves."""
    B, T = mask.shape
    out = torch.arange(T).repeat(B, 1)
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        for t, s in zip(real, reversed(real)):
            out[b, t] = s
    return out


@pytest.mark.parametrize("rows", [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0],
                                  [1, 1, 1, 1, 1, 1]])
def test_reverse_index_keeps_pads_in_place(rows):
    mask = torch.tensor([rows, [1] * 3 + [0] * 3])
    got = reverse_index(2, 6, "cpu", mask)
    assert torch.equal(got, _reference_index(mask))
    x = torch.randn(2, 6, 3)
    assert torch.equal(take(take(x, got), got), x)  # its own inverse


def test_reverse_index_packed_segments():
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    got = reverse_index(1, 9, "cpu", cu_seqlens=cu)
    assert got.tolist() == [[2, 1, 0, 3, 8, 7, 6, 5, 4]]


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_bidirectional_every_mixer(mixer):
    torch.manual_seed(0)
    cfg = _config(mixer, bidirectional=True)
    model = AutoModel.from_config(cfg).eval()
    wrapped = [layer.mixer for layer in model.layers]
    assert all(isinstance(m, BidirectionalMixer) for m in wrapped)
    # both directions have their own, initialized weights
    f, b = wrapped[0].forward_mixer, wrapped[0].backward_mixer
    assert type(f) is type(b) and sum(p.numel() for p in f.parameters()) == sum(p.numel() for p in b.parameters())
    assert all(pf.data_ptr() != pb.data_ptr() for pf, pb in zip(f.parameters(), b.parameters()))

    # the wrapper is forward + flipped(backward(flipped)) on an unpadded batch
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        want = f(x) + torch.flip(b(torch.flip(x, [1])), [1])
        assert_close(f"{mixer} bidirectional = fwd + flip(bwd(flip))", wrapped[0](x), want, 1e-5)

    # the last token reaches the first position (T = 4: inside one DiagAttention block, which is local)
    ids = torch.randint(0, V, (1, 4))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % V
    with torch.no_grad():
        h1 = model(ids, use_cache=False).last_hidden_state
        h2 = model(other, use_cache=False).last_hidden_state
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-6

    # padded batches give each sequence what it gets alone (right and left padding)
    lengths = [9, 4, 1]
    seqs = [torch.randint(0, V, (n,)) for n in lengths]
    for side in ("right", "left"):
        ids = torch.zeros(3, 9, dtype=torch.long)
        mask = torch.zeros(3, 9, dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(9 - len(s), 9)
            ids[i, sl], mask[i, sl] = s, 1
        with torch.no_grad():
            batched = model(ids, attention_mask=mask, use_cache=False).last_hidden_state
            for i, s in enumerate(seqs):
                sl = slice(0, len(s)) if side == "right" else slice(9 - len(s), 9)
                alone = model(s[None], use_cache=False).last_hidden_state[0]
                assert_close(f"{mixer} {side}-padded row {i}", batched[i, sl], alone, 1e-4)

    # gradients reach the backward copy
    model.train()
    model(torch.randint(0, V, (2, 6)), use_cache=False).last_hidden_state.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())

    with pytest.raises(ValueError, match="no decoding cache"):
        model(torch.randint(0, V, (1, 4)), use_cache=True)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_classification_pooling_padded_equals_alone(pooling):
    torch.manual_seed(0)
    cfg = seqzoo.make_config("deltanet", **TINY, num_labels=3, classifier_pooling=pooling, bidirectional=True)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    assert (model.cls_token is not None) == (pooling == "cls")
    lengths = [8, 3, 1]
    seqs = [torch.randint(0, V, (n,)) for n in lengths]
    ids = torch.full((3, 8), cfg.pad_token_id, dtype=torch.long)
    mask = torch.zeros(3, 8, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = torch.cat([model(s[None]).logits for s in seqs])
    assert_close(f"classification ({pooling}), padded vs alone", batched, alone, 1e-4)
    if pooling == "cls":  # the CLS position reads the sequence: changing the last token changes the logits
        other = seqs[0].clone()
        other[-1] = (other[-1] + 1) % V
        with torch.no_grad():
            assert (model(other[None]).logits - model(seqs[0][None]).logits).abs().max() > 1e-6


def test_unknown_pooling_is_an_error():
    with pytest.raises(seqzoo.common.ConfigError, match="classifier_pooling.*'cls'"):
        seqzoo.make_config("deltanet", **TINY, classifier_pooling="max")
