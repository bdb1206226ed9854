"""Mamba (Mamba-1, model_type zoo_mamba) on a tiny config: the shared architecture checks, mamba_ssm's
initialisation, the cache contents and state size, a hybrid with attention, and the kernel backends agreeing
inside the model."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

import seqzoo
from seqzoo.architectures.mamba import MambaMixer, ZooMambaConfig, ZooMambaForCausalLM

from . import common

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, state_size=6, vocab_size=V)  # 64 channels, dt_rank 2


@pytest.fixture
def model():
    return common.tiny_lm("zoo_mamba", **TINY)


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
    common.check_classification_padding("zoo_mamba", V, pooling, side, **TINY)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V)


def test_padding_writes_nothing_to_the_state(model):
    x = torch.randint(0, 256, (1, 6))
    ids = torch.cat([torch.full((1, 4), model.config.pad_token_id), x], 1)
    mask = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        padded = common.cache_of(model(ids, attention_mask=mask, use_cache=True))
        alone = common.cache_of(model(x, use_cache=True))
    for layer in range(2):
        for key in ("conv", "ssm"):
            common.assert_close(f"layer {layer} {key}", padded[layer][key], alone[layer][key], 1e-5)


def test_initialisation_follows_mamba_ssm(model):
    mixer = model.model.layers[0].mixer
    assert torch.allclose(torch.exp(mixer.A_log.detach()), torch.arange(1.0, 7.0).repeat(64, 1))  # S4D-real
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert ((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert mixer.dt_proj.weight.abs().max() <= 2 ** -0.5 and mixer.dt_rank == 2
    assert torch.equal(mixer.D.detach(), torch.ones(64))
    assert model.model.layers[0].ffn is None


def test_state_size_and_cache_contents(model):
    settings = model.model.layers[0].mixer_settings
    assert MambaMixer.state_size(model.config, settings) == 64 * 6 + 64 * 3
    assert model.model.state_size() == 2 * MambaMixer.state_size(model.config, settings)
    with torch.no_grad():
        out = model(torch.randint(0, V, (3, 5)), use_cache=True)
    layer = common.cache_of(out)[0]
    assert layer["ssm"].shape == (3, 64, 6) and layer["ssm"].dtype == torch.float32
    assert layer["conv"].shape == (3, 64, 3)


def test_variants():
    m = common.tiny_lm("zoo_mamba", **dict(TINY, expand=1, dt_rank=5, conv_size=2))
    assert m.model.layers[0].mixer.channels == 32 and m.model.layers[0].mixer.dt_rank == 5
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)


def test_hybrid_with_attention():
    m = common.tiny_lm("zoo_mamba", **dict(TINY, num_hidden_layers=3, num_heads=2),
                       mixer_pattern=["mamba", "attention", "mamba"])
    assert [type(b.mixer).__name__ for b in m.model.layers] == ["MambaMixer", "Attention", "MambaMixer"]
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)
    common.check_packed_equals_separate(m, V)


def test_reference_backend_equals_torch_backend():
    torch.manual_seed(0)
    a = common.tiny_lm("zoo_mamba", **TINY)
    b = common.tiny_lm("zoo_mamba", **TINY, kernel_backend="reference")
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, V, (2, 70))
    with torch.no_grad():
        common.assert_close("torch vs reference backend", a(x).logits, b(x).logits, 1e-5)


@pytest.mark.triton
def test_triton_backend_in_the_model(triton_device):
    torch.manual_seed(0)
    ref = common.tiny_lm("zoo_mamba", **TINY).to(triton_device)
    tri = common.tiny_lm("zoo_mamba", **TINY, kernel_backend="triton").to(triton_device)
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
    assert seqzoo.list_architectures()["zoo_mamba"] is ZooMambaConfig
    cfg = AutoConfig.for_model("zoo_mamba", **TINY)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), ZooMambaForCausalLM)
    with pytest.raises(ValueError, match="state_size"):
        seqzoo.make_config("zoo_mamba", **dict(TINY, state_size=0))
    with pytest.raises(ValueError, match="kernel_backend"):
        seqzoo.make_config("zoo_mamba", kernel_backend="cuda", **TINY)
