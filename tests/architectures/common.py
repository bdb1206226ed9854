"""Checks every architecture must pass; each tests/architectures/test_<arch>.py calls them on a tiny config.

Each check compares two different computations of the same thing (cached vs full forward, generate vs
argmax loop, padded vs unpadded, saved vs loaded), so a broken cache, mask or checkpoint fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo  # noqa: F401  (registers the architectures)
from seqzoo.architectures.base.modeling import CACHE_FIELD
from seqzoo.kernels.testing import assert_close


def tiny_lm(model_type: str, **fields):
    cfg = seqzoo.make_config(model_type, **fields)
    return AutoModelForCausalLM.from_config(cfg).eval()


def cache_of(output):
    return getattr(output, CACHE_FIELD)


def check_forward_backward(model, vocab: int, T: int = 13, B: int = 2):
    model.train()
    x = torch.randint(0, vocab, (B, T))
    out = model(x, labels=x)
    assert out.logits.shape == (B, T, model.config.vocab_size)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not zero, f"parameters whose gradient is exactly zero: {zero}"
    model.zero_grad(set_to_none=True)
    model.eval()


def check_cached_decoding(model, vocab: int, prefix: int = 5, steps: int = 7, B: int = 2, tol: float = 1e-4):
    """Prefix forward, then one token at a time from the cache, equals the full forward's logits."""
    x = torch.randint(0, vocab, (B, prefix + steps))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        out = model(x[:, :prefix], use_cache=True)
        logits = [out.logits]
        cache = cache_of(out)
        for t in range(prefix, prefix + steps):
            out = model(x[:, t: t + 1], use_cache=True, **{CACHE_FIELD: cache})
            cache = cache_of(out)
            logits.append(out.logits)
    assert cache.seen_tokens == prefix + steps
    assert_close("cached decoding logits", torch.cat(logits, dim=1), full, tol)


def check_chunked_prefill(model, vocab: int, B: int = 2, tol: float = 1e-4):
    """Two multi-token pieces through the cache equal one full forward (prefill in chunks)."""
    x = torch.randint(0, vocab, (B, 19))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        a = model(x[:, :11], use_cache=True)
        b = model(x[:, 11:], use_cache=True, **{CACHE_FIELD: cache_of(a)})
    assert_close("chunked prefill logits", torch.cat([a.logits, b.logits], 1), full, tol)


def check_generate_greedy(model, vocab: int, prefix: int = 6, new: int = 8):
    # byte ids only: a prompt holding the pad id would make generate() mask it (it infers the attention mask
    # from pad tokens), which the unmasked argmax loop does not
    x = torch.randint(0, min(vocab, 256), (2, prefix))
    with torch.no_grad():
        gen = model.generate(x, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=model.config.pad_token_id)
        seq = x
        for _ in range(new):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert gen.shape == seq.shape
    assert torch.equal(gen, seq), f"generate() {gen.tolist()} != argmax loop {seq.tolist()}"


def check_generate_left_padded(model, long: int = 7, short: int = 4, new: int = 5):
    """A left-padded batch through generate() gives each row what it gives alone."""
    a, b = torch.randint(0, 256, (1, long)), torch.randint(0, 256, (1, short))
    pad = model.config.pad_token_id
    ids = torch.cat([a, torch.cat([torch.full((1, long - short), pad), b], 1)])
    mask = torch.tensor([[1] * long, [0] * (long - short) + [1] * short])
    kw = dict(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=pad)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **kw)
        alone_a, alone_b = model.generate(a, **kw), model.generate(b, **kw)
    assert torch.equal(batched[0], alone_a[0])
    assert torch.equal(batched[1, long - short:], alone_b[0])


def check_save_load(model, vocab: int, path, remote_code: bool = True):
    """save_pretrained -> AutoModelForCausalLM.from_pretrained gives identical logits, in this process and in a
    fresh one that never imports seqzoo (trust_remote_code through the saved shim)."""
    x = torch.randint(0, vocab, (2, 9))
    with torch.no_grad():
        want = model(x, use_cache=False).logits
    model.save_pretrained(path)
    files = set(os.listdir(path))
    assert "model.safetensors" in files and "config.json" in files and "seqzoo_remote.py" in files, files
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x, use_cache=False).logits, want)
    base = AutoModel.from_pretrained(path)
    assert type(base).__name__.endswith("Model")
    if remote_code:
        torch.save({"x": x, "want": want}, os.path.join(path, "expected.pt"))
        script = textwrap.dedent(f"""
            import sys, torch
            from transformers import AutoModelForCausalLM
            m = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
            d = torch.load({os.path.join(str(path), 'expected.pt')!r})
            with torch.no_grad():
                got = m(d["x"], use_cache=False).logits
            assert torch.equal(got, d["want"]), (got - d["want"]).abs().max()
            print("OK", type(m).__name__)
        """)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(path), timeout=300)
        assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
    return loaded


def check_classification_padding(model_type: str, vocab: int, pooling: str, padding_side: str = "right", **fields):
    """A padded batch gives each example the logits it gets alone, unpadded."""
    cfg = seqzoo.make_config(model_type, num_labels=3, classifier_pooling=pooling, **fields)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    lengths = [9, 4, 1]
    T = max(lengths)
    pad = cfg.pad_token_id
    seqs = [torch.randint(0, vocab, (n,)) for n in lengths]
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        if padding_side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        else:
            ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = torch.cat([model(s[None]).logits for s in seqs])
    assert batched.shape == (3, 3)
    assert_close(f"classification ({pooling}, {padding_side} padding)", batched, alone, 1e-5)
    labels = torch.tensor([0, 2, 1])
    loss = model(ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(loss) and loss > 0


def check_packed_equals_separate(model, vocab: int, lengths=(5, 1, 8)):
    """cu_seqlens (B = 1, sequences packed along T) equals running each sequence alone."""
    seqs = [torch.randint(0, vocab, (n,)) for n in lengths]
    packed = torch.cat(seqs)[None]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    with torch.no_grad():
        got = model(packed, cu_seqlens=cu, use_cache=False).logits[0]
        want = torch.cat([model(s[None], use_cache=False).logits[0] for s in seqs])
    assert_close("packed (cu_seqlens) logits", got, want, 1e-4)
