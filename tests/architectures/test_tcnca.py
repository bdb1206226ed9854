"""TCNCA on tiny configs, through the shared architecture checks, plus its own pieces (the TCN settings and
receptive field, the ring-buffer cache, presets, bidirectional classification)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.mega import MegaFFN
from seqzoo.architectures.tcnca import TcncaConfig, TcncaForCausalLM, TcncaMixer
from seqzoo.architectures.base.modeling import CACHE_FIELD

from . import common

V = 259
# chunk_size 4 and a small TCN (K = 2, base 2, 3 levels: receptive field 8) so that 13-token sequences cross
# chunk boundaries and outrun the receptive field
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V, chunk_size=4, kernel_size=2,
            dilation_base=2, tcn_depth=3)
VARIANTS = {
    "small-tcn": {},
    "defaults": dict(kernel_size=4, dilation_base=4, tcn_depth=6, chunk_size=0),  # RF 4096, full attention
    "gelu-no-residual": dict(tcn_activation="gelu", tcn_residual=False, kernel_size=3, dilation_base=3),
}


@pytest.fixture(params=list(VARIANTS))
def model(request):
    return common.tiny_lm("tcnca", **{**TINY, **VARIANTS[request.param]})


def test_defaults_and_receptive_field():
    cfg = seqzoo.make_config("tcnca", hidden_size=32, num_heads=2, num_hidden_layers=2, vocab_size=V)
    mixer = cfg.layers[0]["mixer"]
    assert (mixer["kernel_size"], mixer["dilation_base"], mixer["depth"], mixer["tcn_activation"],
            mixer["tcn_residual"], mixer["chunk_size"]) == (4, 4, 6, "silu", True, 128)
    m = AutoModelForCausalLM.from_config(cfg)
    assert [type(b.mixer) for b in m.model.layers] == [TcncaMixer, TcncaMixer]
    assert isinstance(m.model.layers[0].ffn, MegaFFN)
    assert m.model.layers[0].mixer.receptive_field == 4096
    # TCN history D·(RF - 1) + one chunk of keys (z = 16) and values (v = 64)
    assert m.model.state_size() == 2 * (32 * 4095 + 128 * (16 + 64))


def test_forward_backward(model):
    common.check_forward_backward(model, V, T=13)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V, prefix=5, steps=7)
    common.check_chunked_prefill(model, V)


def test_decoding_uses_the_ring_buffer():
    model = common.tiny_lm("tcnca", **TINY)
    x = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        out = model(x[:, :5], use_cache=True)
        cache = common.cache_of(out)
        ring = cache[0]["ring"]
        assert ring.shape == (2, 32, 7) and cache[0]["pos"].tolist() == [5, 5]
        model(x[:, 5:], use_cache=True, **{CACHE_FIELD: cache})
    assert cache[0]["ring"] is ring and cache[0]["pos"].tolist() == [6, 6]  # updated in place, one slot a level


def test_generate_equals_argmax_loop():
    common.check_generate_greedy(common.tiny_lm("tcnca", **TINY), V)


def test_generate_with_left_padding_matches_unpadded():
    common.check_generate_left_padded(common.tiny_lm("tcnca", **TINY), long=7, short=5, new=6)


def test_save_load_round_trip(tmp_path):
    model = common.tiny_lm("tcnca", **TINY, tcn_activation="relu")
    loaded = common.check_save_load(model, V, tmp_path / "ckpt")
    assert loaded.config.layers == model.config.layers and loaded.config.layers[0]["mixer"]["tcn_activation"] == "relu"


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("tcnca", V, pooling, side, **TINY)


def test_bidirectional_classification():
    common.check_classification_padding("tcnca", V, "mean", "left", causal=False, **TINY)
    cfg = seqzoo.make_config("tcnca", causal=False, num_labels=2, **TINY)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    assert model.model.layers[0].mixer.tcn_weight.shape == (2, 3, 32, 2)
    x = torch.randint(0, 256, (1, 9))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 256
    with torch.no_grad():
        assert not torch.allclose(model.model(x).last_hidden_state[0, 0], model.model(y).last_hidden_state[0, 0])
    lm = AutoModelForCausalLM.from_config(seqzoo.make_config("tcnca", causal=False, **TINY))
    with pytest.raises(ValueError, match="causal=False"):
        lm(x, use_cache=True)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_sequences_equal_separate(causal):
    model = common.tiny_lm("tcnca", **TINY, causal=causal)
    common.check_packed_equals_separate(model, V, lengths=(5, 1, 9))


def test_presets():
    lm = TcncaConfig.from_preset("enwik8")
    mixer = lm.layers[0]["mixer"]
    assert (lm.num_hidden_layers, lm.hidden_size, mixer["chunk_size"], mixer["depth"]) == (12, 512, 2048, 6)
    image = TcncaConfig.from_preset("image", tcn_depth=5)
    assert (image.hidden_size, image.layers[0]["mixer"]["depth"], image.layers[0]["mixer"]["causal"]) == (160, 5, False)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"layers\[0\]\.mixer \(tcnca\)\.tcn_activation: expected one of"):
        seqzoo.make_config("tcnca", **{**TINY, "tcn_activation": "tanh"})
    with pytest.raises(ValueError, match=r"layers\[0\]\.mixer \(tcnca\)\.depth: expected a positive number"):
        seqzoo.make_config("tcnca", **{**TINY, "tcn_depth": 0})
    with pytest.raises(ValueError, match=r"TcncaConfig\.tcn_depth"):
        seqzoo.make_config("tcnca", **{**TINY, "tcn_depth": "6"})


def test_registered_with_auto_classes():
    assert seqzoo.list_architectures()["tcnca"] is TcncaConfig
    assert isinstance(AutoModelForCausalLM.from_config(seqzoo.make_config("tcnca", **TINY)), TcncaForCausalLM)
