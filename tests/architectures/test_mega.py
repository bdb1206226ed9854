"""MEGA on tiny configs, through the shared architecture checks, plus its own pieces (presets, the EMA paths
inside the layer, bidirectional classification, the normalized FFN)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.mega import MegaConfig, MegaFFN, MegaForCausalLM, MegaMixer
from seqzoo.architectures.mega.modeling_mega import laplace_blocks

from . import common

V = 259
# chunk_size 4 so that the short test sequences cross several chunk boundaries
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V, chunk_size=4)


VARIANTS = {"chunked": {}, "full": dict(chunk_size=0), "laplace": dict(attention="laplace")}


@pytest.fixture(params=list(VARIANTS))
def model(request):
    return common.tiny_lm("mega", **{**TINY, **VARIANTS[request.param]})


@pytest.mark.parametrize("causal", [True, False])
def test_laplace_blocks_against_a_loop(causal):
    """laplace_blocks (padded blocks, packed sequences) against MEGA's formula one query at a time."""
    torch.manual_seed(0)
    cu = torch.tensor([0, 7, 7, 20], dtype=torch.int32)
    q, k = torch.randn(1, 20, 2, 5), torch.randn(1, 20, 2, 5)
    v = torch.randn(1, 20, 2, 3)
    got = laplace_blocks(q, k, v, 4, causal, cu)
    want = torch.zeros_like(got)
    for s, e in ((0, 7), (7, 20)):
        for i in range(s, e):
            b0 = s + (i - s) // 4 * 4
            keys = range(b0, min(b0 + 4, e)) if not causal else range(b0, i + 1)
            for h in range(2):
                for j in keys:
                    x = (q[0, i, h] @ k[0, j, h]) / len(keys)
                    f = 0.5 * (1 + torch.erf((x - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
                    want[0, i, h] += f * v[0, j, h]
    common.assert_close("laplace blocks", got, want, 1e-5)


def test_layers_are_mega_with_normalized_ffn():
    m = common.tiny_lm("mega", **TINY)
    assert [type(b.mixer) for b in m.model.layers] == [MegaMixer, MegaMixer]
    assert all(isinstance(b.ffn, MegaFFN) and b.ffn.fc1.out_features == 64 for b in m.model.layers)
    # EMA state D·N + one chunk of keys (z = 16) and values (v = 64)
    assert m.model.state_size() == 2 * (32 * 16 + 4 * (16 + 64))


def test_forward_backward(model):
    common.check_forward_backward(model, V, T=13)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V, prefix=5, steps=7)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop():
    common.check_generate_greedy(common.tiny_lm("mega", **TINY), V)


def test_generate_with_left_padding_matches_unpadded():
    common.check_generate_left_padded(common.tiny_lm("mega", **TINY), long=7, short=5, new=6)


def test_save_load_round_trip(tmp_path):
    model = common.tiny_lm("mega", **TINY, ndim=4)
    loaded = common.check_save_load(model, V, tmp_path / "ckpt")
    assert loaded.config.layers == model.config.layers and loaded.config.layers[0]["mixer"]["ndim"] == 4


def test_ema_paths_give_the_same_model():
    """ema_backend fft (MEGA's) / scan / reference: one model, three EMA computations, the same logits."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 21))
    logits = {}
    for path in ("fft", "scan", "reference"):
        torch.manual_seed(1)
        m = common.tiny_lm("mega", **TINY, ema_backend=path)
        with torch.no_grad():
            logits[path] = m(x).logits
    common.assert_close("scan vs fft", logits["scan"], logits["fft"], 1e-5)
    common.assert_close("reference vs fft", logits["reference"], logits["fft"], 1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("mega", V, pooling, side, **TINY)


def test_bidirectional_classification():
    """causal=False: a second EMA from the end and bidirectional chunks; padding still changes nothing, and a
    later token changes an earlier token's features."""
    common.check_classification_padding("mega", V, "mean", "right", causal=False, **TINY)
    cfg = seqzoo.make_config("mega", causal=False, num_labels=2, **TINY)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    assert model.model.layers[0].mixer.ema_delta.shape[0] == 2
    x = torch.randint(0, 256, (1, 9))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 256
    with torch.no_grad():
        assert not torch.allclose(model.model(x).last_hidden_state[0, 0], model.model(y).last_hidden_state[0, 0])
    lm = AutoModelForCausalLM.from_config(seqzoo.make_config("mega", causal=False, **TINY))
    with pytest.raises(ValueError, match="causal=False"):
        lm(x, use_cache=True)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V, lengths=(5, 1, 9))


def test_presets():
    lm = MegaConfig.from_preset("enwik8")
    mixer = lm.layers[0]["mixer"]
    assert (lm.num_hidden_layers, lm.hidden_size, mixer["z_dim"], mixer["v_dim"], mixer["chunk_size"]) == \
        (12, 512, 128, 1024, 2048)
    assert mixer["ndim"] == 16 and mixer["causal"] and lm.layers[0]["ffn"]["type"] == "mega_ffn"
    text = MegaConfig.from_preset("text", vocab_size=V)
    assert (text.num_hidden_layers, text.hidden_size, text.layers[0]["mixer"]["chunk_size"]) == (4, 128, 0)
    assert not text.layers[0]["mixer"]["causal"] and not text.use_cache
    assert text.layers[0]["mixer"]["attention"] == "softmax"
    assert MegaConfig.from_preset("pathfinder").layers[0]["mixer"]["attention"] == "laplace"
    with pytest.raises(ValueError, match="preset must be one of"):
        MegaConfig.from_preset("lra")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"layers\[0\]\.mixer \(mega\)\.ema_backend: expected one of"):
        seqzoo.make_config("mega", ema_backend="triton", **TINY)
    with pytest.raises(ValueError, match=r"chunk_size: expected 0 \(full attention\) or a positive"):
        seqzoo.make_config("mega", **{**TINY, "chunk_size": -1})
    with pytest.raises(ValueError, match=r"ndim: expected a positive number, got 0"):
        seqzoo.make_config("mega", ndim=0, **TINY)


def test_registered_with_auto_classes():
    assert seqzoo.list_architectures()["mega"] is MegaConfig
    m = AutoModelForCausalLM.from_config(seqzoo.make_config("mega", **TINY))
    assert isinstance(m, MegaForCausalLM)
