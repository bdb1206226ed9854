"""Mamba-2 (model_type zoo_mamba2) on a tiny config: the shared architecture checks, mamba_ssm's initialisation,
the cache contents and state size, grouped B/C, a hybrid with attention, and the kernel backends agreeing
inside the model."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

import seqzoo
from seqzoo.architectures.mamba2 import Mamba2Mixer, ZooMamba2Config, ZooMamba2ForCausalLM

from . import common

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, head_dim=16, state_size=12, vocab_size=V)  # 4 heads of 16


@pytest.fixture
def model():
    return common.tiny_lm("zoo_mamba2", **TINY)


def test_forward_backward(model):
    common.check_forward_backward(model, V)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop(model):
    common.check_generate_greedy(model, V)


def test_generate_with_left_padding_matches_unpadded(model):
    common.check_generate_left_padded(model)


def test_save_load_round_trip(model, tmp_path):
    common.check_save_load(model, V, tmp_path / "ckpt")


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("zoo_mamba2", V, pooling, side, **TINY)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V)


def test_padding_writes_nothing_to_the_state(model):
    """A left-padded row leaves the same conv and SSM state as the row alone, unpadded."""
    x = torch.randint(0, 256, (1, 6))
    ids = torch.cat([torch.full((1, 4), model.config.pad_token_id), x], 1)
    mask = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        padded = common.cache_of(model(ids, attention_mask=mask, use_cache=True))
        alone = common.cache_of(model(x, use_cache=True))
    for layer in range(2):
        for key in ("conv", "ssm"):
            common.assert_close(f"layer {layer} {key}", padded[layer][key], alone[layer][key], 1e-5)


def test_grouped_bc_and_default_width():
    m = common.tiny_lm("zoo_mamba2", **dict(TINY, n_groups=2))
    assert m.model.layers[0].mixer.n_groups == 2
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)
    common.check_packed_equals_separate(m, V)
    cfg = seqzoo.make_config("zoo_mamba2", hidden_size=64, num_hidden_layers=1, vocab_size=V)  # 2 x width, P 64
    assert (cfg.num_heads, cfg.head_dim, cfg.mlp_type) == (2, 64, "none")


def test_initialisation_follows_mamba_ssm(model):
    mixer = model.model.layers[0].mixer
    A = torch.exp(mixer.A_log.detach())
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(mixer.dt_bias.detach())
    assert ((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert torch.equal(mixer.D.detach(), torch.ones(4))
    assert model.model.layers[0].ffn is None  # no FFN
    assert all(getattr(p, "_no_weight_decay", False) for p in (mixer.A_log, mixer.dt_bias, mixer.D))


def test_state_size_and_cache_contents(model):
    settings = model.model.layers[0].mixer_settings
    H, P, N = 4, 16, 12
    assert Mamba2Mixer.state_size(model.config, settings) == H * P * N + (H * P + 2 * N) * 3
    assert model.model.state_size() == 2 * Mamba2Mixer.state_size(model.config, settings)
    with torch.no_grad():
        out = model(torch.randint(0, V, (3, 5)), use_cache=True)
    layer = common.cache_of(out)[0]
    assert layer["ssm"].shape == (3, H, P, N) and layer["ssm"].dtype == torch.float32
    assert layer["conv"].shape == (3, H * P + 2 * N, 3)


def test_layer_matches_a_direct_recurrence(model):
    """The mixer's output equals the block written out by hand with the per-token reference scan."""
    from seqzoo.kernels.ssd.reference import ssd_scan_reference

    mixer = model.model.layers[0].mixer
    h = torch.randn(2, 9, 32)
    with torch.no_grad():
        got = mixer(h)
        z, xbc, dt = mixer.in_proj(h).split([64, 64 + 24, 4], -1)
        w = mixer.conv.weight  # [C, 4]
        xbc = F.silu(F.conv1d(F.pad(xbc.transpose(1, 2), (3, 0)), w[:, None], mixer.conv.bias, groups=w.shape[0]))
        x, Bm, Cm = xbc.transpose(1, 2).split([64, 12, 12], -1)
        y, _ = ssd_scan_reference(x.reshape(2, 9, 4, 16), dt, -torch.exp(mixer.A_log), Bm[:, :, None],
                                  Cm[:, :, None], D=mixer.D, dt_bias=mixer.dt_bias)
        g = y.reshape(2, 9, 64) * F.silu(z)
        want = mixer.out_proj(g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * mixer.norm_weight)
    common.assert_close("mamba2 layer", got, want, 1e-5)


def test_hybrid_with_attention():
    m = common.tiny_lm("zoo_mamba2", **dict(TINY, num_hidden_layers=3),
                       layers=["mamba2", {"mixer": {"type": "attention", "num_heads": 2, "head_dim": 16},
                                          "ffn": "swiglu"}, "mamba2"])
    assert [type(b.mixer).__name__ for b in m.model.layers] == ["Mamba2Mixer", "Attention", "Mamba2Mixer"]
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)
    common.check_packed_equals_separate(m, V)


def test_reference_backend_equals_torch_backend():
    torch.manual_seed(0)
    a = common.tiny_lm("zoo_mamba2", **TINY)
    b = common.tiny_lm("zoo_mamba2", **TINY, kernel_backend="reference")
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, V, (2, 70))  # > one 64-token chunk
    with torch.no_grad():
        common.assert_close("torch vs reference backend", a(x).logits, b(x).logits, 1e-5)


@pytest.mark.triton
def test_triton_backend_in_the_model(triton_device):
    """The Triton kernels inside the layer (chunked; the recurrent kernel for short inputs without gradients)
    agree with the torch path, forward, decoding and parameter gradients."""
    torch.manual_seed(0)
    ref = common.tiny_lm("zoo_mamba2", **TINY).to(triton_device)
    tri = common.tiny_lm("zoo_mamba2", **TINY, kernel_backend="triton").to(triton_device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randint(0, V, (2, 70), device=triton_device)
    with torch.no_grad():
        common.assert_close("triton chunk vs torch", tri(x).logits, ref(x).logits, 1e-4)
    common.check_cached_decoding(tri, V, prefix=6, steps=2)
    ref.train(), tri.train()
    ref(x[:, :20], labels=x[:, :20]).loss.backward()
    tri(x[:, :20], labels=x[:, :20]).loss.backward()
    for (n, pa), (_, pb) in zip(ref.named_parameters(), tri.named_parameters()):
        common.assert_close(n, pb.grad, pa.grad, 1e-4)


def test_auto_classes_and_config_errors():
    assert seqzoo.list_architectures()["zoo_mamba2"] is ZooMamba2Config
    cfg = AutoConfig.for_model("zoo_mamba2", **TINY)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), ZooMamba2ForCausalLM)
    with pytest.raises(ValueError, match="n_groups"):
        seqzoo.make_config("zoo_mamba2", n_groups=3, **TINY)
    with pytest.raises(ValueError, match="kernel_backend"):
        seqzoo.make_config("zoo_mamba2", kernel_backend="cuda", **TINY)
    with pytest.raises(ValueError, match="head_dim"):
        seqzoo.make_config("zoo_mamba2", hidden_size=32, head_dim=48, num_hidden_layers=1)
    with pytest.raises(ValueError, match="dt_min"):
        seqzoo.make_config("zoo_mamba2", dt_min=0.5, dt_max=0.1, **TINY)
    assert math.isfinite(common.tiny_lm("zoo_mamba2", **TINY, dt_limit_max=0.05)(torch.randint(0, V, (1, 5))).logits.sum())
