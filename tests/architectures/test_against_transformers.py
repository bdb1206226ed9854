"""The Mamba and Mamba-2 mixers against an independent implementation: transformers' own MambaMixer and
Mamba2Mixer (their pure-PyTorch paths), with the same weights copied in. Forward and input gradient agree to
fp32 rounding, so the block wiring (projection splits, conv, dt path, gated norm) is mamba_ssm's."""

import pytest
import torch

import seqzoo  # noqa: F401
from seqzoo.architectures.mamba.configuration_mamba import ZooMambaConfig
from seqzoo.architectures.mamba.modeling_mamba import MambaMixer, ZooMambaForCausalLM
from seqzoo.architectures.mamba2.configuration_mamba2 import ZooMamba2Config
from seqzoo.architectures.mamba2.modeling_mamba2 import Mamba2Mixer, ZooMamba2ForCausalLM
from seqzoo.kernels.testing import assert_close

hf_mamba = pytest.importorskip("transformers.models.mamba.modeling_mamba")
hf_mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")


def _mixer(model, cls):
    return next(m for m in model.modules() if isinstance(m, cls))


def _compare(ours, theirs, hidden, length=37):
    x = torch.randn(2, length, hidden, requires_grad=True)
    a = ours(x)
    ga, = torch.autograd.grad(a, x, torch.ones_like(a))
    b = theirs(x)
    gb, = torch.autograd.grad(b, x, torch.ones_like(b))
    assert_close("output", a, b, 1e-5)
    assert_close("input gradient", ga, gb, 1e-5)


def test_mamba2_mixer_matches_transformers():
    torch.manual_seed(0)
    cfg = ZooMamba2Config(hidden_size=48, num_hidden_layers=1, num_heads=4, head_dim=24, state_size=16, n_groups=2,
                          chunk_size=16, vocab_size=300)
    ours = _mixer(ZooMamba2ForCausalLM(cfg), Mamba2Mixer)
    with torch.no_grad():  # non-default values everywhere, so that no term hides behind a zero or a one
        ours.D.uniform_(0.5, 1.5)
        ours.norm_weight.uniform_(0.5, 1.5)
        ours.conv.bias.uniform_(-0.3, 0.3)
    hcfg = hf_mamba2.Mamba2Config(hidden_size=48, num_heads=4, head_dim=24, state_size=16, n_groups=2, expand=2,
                                  conv_kernel=4, use_bias=False, use_conv_bias=True, chunk_size=16,
                                  layer_norm_epsilon=1e-5, time_step_limit=(0.0, float("inf")))
    theirs = hf_mamba2.Mamba2Mixer(hcfg, layer_idx=0)
    with torch.no_grad():
        theirs.in_proj.weight.copy_(ours.in_proj.weight)
        theirs.conv1d.weight.copy_(ours.conv.weight[:, None, :])
        theirs.conv1d.bias.copy_(ours.conv.bias)
        for name in ("A_log", "dt_bias", "D"):
            getattr(theirs, name).copy_(getattr(ours, name))
        theirs.norm.weight.copy_(ours.norm_weight)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
    _compare(ours, theirs, 48)


def test_mamba_mixer_matches_transformers():
    torch.manual_seed(0)
    cfg = ZooMambaConfig(hidden_size=32, num_hidden_layers=1, expand=2, state_size=8, vocab_size=300)
    ours = _mixer(ZooMambaForCausalLM(cfg), MambaMixer)
    with torch.no_grad():
        ours.D.uniform_(0.5, 1.5)
        ours.conv.bias.uniform_(-0.3, 0.3)
    hcfg = hf_mamba.MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, use_bias=False,
                                use_conv_bias=True, time_step_rank=ours.dt_rank, hidden_act="silu")
    theirs = hf_mamba.MambaMixer(hcfg, layer_idx=0)
    with torch.no_grad():
        theirs.in_proj.weight.copy_(ours.in_proj.weight)
        theirs.conv1d.weight.copy_(ours.conv.weight[:, None, :])
        theirs.conv1d.bias.copy_(ours.conv.bias)
        theirs.x_proj.weight.copy_(ours.x_proj.weight)
        theirs.dt_proj.weight.copy_(ours.dt_proj.weight)
        theirs.dt_proj.bias.copy_(ours.dt_proj.bias)
        theirs.A_log.copy_(ours.A_log)
        theirs.D.copy_(ours.D)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
    _compare(ours, theirs, 32)
