"""Checkpoints survive every Hugging Face round trip: load (with or without ``import seqzoo``, with or without
trust_remote_code) -> save -> load -> save for models and the tokenizer, Trainer.save_model after a
trust_remote_code load, saves that fail midway, mistyped model_type, wrongly typed config values, file modes."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import seqzoo
from seqzoo.architectures.base import registry
from seqzoo.common import ConfigError

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V)
IDS = [[5, 9, 200, 17, 3, 44, 7]]


def _checkpoint(path, model_type="deltanet", **fields):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(seqzoo.make_config(model_type, **TINY, **fields)).eval()
    model.save_pretrained(path)
    seqzoo.ByteTokenizer().save_pretrained(path)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def _run(script: str, cwd) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                         cwd=str(cwd), timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def test_save_after_trust_remote_code_load_without_importing_seqzoo(tmp_path):
    """A process that never imports seqzoo: load with trust_remote_code, save model and tokenizer, load the
    copy, save again, and Trainer.save_model; every copy gives the same logits and loads in this process."""
    want = _checkpoint(tmp_path / "ckpt")
    torch.save(want, tmp_path / "want.pt")
    out = _run(f"""
        import os, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
        want = torch.load("want.pt")
        ids = torch.tensor({IDS})
        src = "ckpt"
        for hop in ("again", "third"):
            m = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=True).eval()
            t = AutoTokenizer.from_pretrained(src, trust_remote_code=True)
            with torch.no_grad():
                assert torch.equal(m(ids).logits, want), hop
            m.save_pretrained(hop)
            t.save_pretrained(hop)
            src = hop
        assert "seqzoo" in sys.modules  # only through the checkpoint's shim, never imported here
        trainer = Trainer(model=m, args=TrainingArguments(output_dir="trainer_out", report_to=[]), processing_class=t)
        trainer.save_model("trainer_out")
        m2 = AutoModelForCausalLM.from_pretrained("trainer_out", trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.equal(m2(ids).logits, want)
        print("OK", sorted(os.listdir("trainer_out")))
    """, tmp_path)
    assert "OK" in out
    for folder in ("again", "third", "trainer_out"):  # and the copies load where seqzoo is imported
        files = set(os.listdir(tmp_path / folder))
        assert {"config.json", "model.safetensors", "seqzoo_remote.py", "tokenizer_config.json"} <= files, files
        assert not any(f.endswith(".py") and f != "seqzoo_remote.py" for f in files), files  # no copied sources
        m = AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
        with torch.no_grad():
            assert torch.equal(m(torch.tensor(IDS)).logits, want)
        assert AutoTokenizer.from_pretrained(tmp_path / folder)("hi").input_ids == [104, 105]


@pytest.mark.parametrize("trust", [False, True])
def test_save_load_save_with_seqzoo_imported(tmp_path, trust):
    want = _checkpoint(tmp_path / "ckpt", "transnormer", block_size=4)
    src = tmp_path / "ckpt"
    for hop in ("a", "b"):
        m = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust).eval()
        t = AutoTokenizer.from_pretrained(src, trust_remote_code=trust)
        with torch.no_grad():
            assert torch.equal(m(torch.tensor(IDS)).logits, want)
        m.save_pretrained(tmp_path / hop)
        t.save_pretrained(tmp_path / hop)
        src = tmp_path / hop
    seqzoo.ByteTokenizer().save_pretrained(tmp_path / "fresh_tok")  # still works in the same process
    assert AutoTokenizer.from_pretrained(tmp_path / "fresh_tok").decode([104, 105]) == "hi"


def _fail_in_shim(monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(registry, "write_remote_shim", boom)


def test_failed_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    model = AutoModelForCausalLM.from_config(seqzoo.make_config("deltanet", **TINY))
    _fail_in_shim(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        model.save_pretrained(tmp_path / "new")
    with pytest.raises(OSError, match="simulated"):
        seqzoo.ByteTokenizer().save_pretrained(tmp_path / "tok")
    assert sorted(os.listdir(tmp_path)) == []  # neither the folders nor their temporary copies


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    want = _checkpoint(tmp_path / "ckpt")
    before = {f: (tmp_path / "ckpt" / f).read_bytes() for f in os.listdir(tmp_path / "ckpt")}
    other = AutoModelForCausalLM.from_config(seqzoo.make_config("deltanet", **{**TINY, "hidden_size": 64}))
    _fail_in_shim(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        other.save_pretrained(tmp_path / "ckpt")
    after = {f: (tmp_path / "ckpt" / f).read_bytes() for f in os.listdir(tmp_path / "ckpt")}
    assert after == before and sorted(os.listdir(tmp_path)) == ["ckpt"]
    monkeypatch.undo()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(m(torch.tensor(IDS)).logits, want)


def test_save_over_an_existing_checkpoint_replaces_it(tmp_path):
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "notes.txt").write_text("kept")  # files that are not the model's stay
    bigger = AutoModelForCausalLM.from_config(seqzoo.make_config("transformer", **{**TINY, "hidden_size": 64}))
    bigger.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.model_type == "transformer" and loaded.config.hidden_size == 64
    assert (tmp_path / "ckpt" / "notes.txt").read_text() == "kept"
    assert not [f for f in os.listdir(tmp_path) if f != "ckpt"]


def _edit_config(path, **changes):
    file = path / "config.json"
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("trust", [False, True])
def test_mistyped_model_type_names_field_and_choices(tmp_path, trust):
    _checkpoint(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", model_type="deltanett")
    with pytest.raises(ConfigError, match=r"model_type '?'deltanett'?.*\(did you mean 'deltanet'\?\).*transformer"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=trust)


def test_mistyped_model_type_without_importing_seqzoo(tmp_path):
    _checkpoint(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", model_type="deltanett")
    out = _run("""
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained("ckpt", trust_remote_code=True)
        except ValueError as e:
            print("ERR", e)
    """, tmp_path)
    assert "ERR model_type: 'deltanett'" in out and "did you mean 'deltanet'" in out


@pytest.mark.parametrize("change,message", [
    (dict(vocab_size="abc"), r"DeltaNetConfig\.vocab_size: expected int, got 'abc'"),
    (dict(norm_eps=[1]), r"DeltaNetConfig\.norm_eps: expected float"),
    (dict(use_cache="yes"), r"DeltaNetConfig\.use_cache: expected bool"),
])
def test_wrongly_typed_config_values_name_the_field(tmp_path, change, message):
    _checkpoint(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", **change)
    with pytest.raises(ConfigError, match=message):
        AutoConfig.from_pretrained(tmp_path / "ckpt")


def test_wrongly_typed_layer_setting_in_config_json(tmp_path):
    _checkpoint(tmp_path / "ckpt")
    data = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    data["layers"][1]["mixer"]["conv_size"] = "four"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"layers\[1\]\.mixer \(deltanet\)\.conv_size: expected int, got 'four'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_every_config_field_of_every_architecture_is_type_checked():
    for model_type, cls in seqzoo.list_architectures().items():
        for field, tp in cls.field_types().items():
            if tp in (int, float, bool) or str(tp) in ("int | None", "float | None", "bool | None"):
                with pytest.raises(ConfigError, match=rf"{field}: expected"):
                    seqzoo.make_config(model_type, **{**TINY, field: "not-a-number"})


def test_saved_files_have_the_usual_modes(tmp_path):
    _checkpoint(tmp_path / "ckpt")
    mask = os.umask(0)
    os.umask(mask)
    for f in os.listdir(tmp_path / "ckpt"):
        mode = stat.S_IMODE(os.stat(tmp_path / "ckpt" / f).st_mode)
        assert mode == 0o666 & ~mask, (f, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt").st_mode) == 0o777 & ~mask
