"""Composed configs: ``base:`` files (one or a list, relative to the file), deep merge, cycles, the output_dir
derived from the file name, the shipped MQAR configs sharing one base, and a run's resolved config that is
complete (no ``base``) and reruns to the same config."""

import os
from pathlib import Path

import pytest
import yaml

from seqzoo.config import ConfigError, deep_merge, default_output_dir, load_composed, load_config
from seqzoo.trainer import main, train

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2, 3], "s": "keep", "n": 5}
    over = {"a": {"y": {"q": 20, "r": 30}, "z": 3}, "l": [9], "n": None}
    merged = deep_merge(base, over)
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 20, "r": 30}, "z": 3}, "l": [9], "s": "keep", "n": None}
    assert base["a"]["y"] == {"p": 1, "q": 2} and base["l"] == [1, 2, 3]  # inputs untouched
    merged["a"]["x"] = 100
    assert base["a"]["x"] == 1  # no shared sub-objects


def test_bases_apply_in_order_relative_to_the_file_that_names_them(tmp_path):
    write(tmp_path / "shared" / "_root.yaml", {"train": {"lr": 0.1, "max_steps": 10, "betas": [0.8, 0.9]},
                                               "task": {"name": "mqar", "seq_len": 32}})
    # a base that has its own base, one folder away: paths are relative to the file that names them
    write(tmp_path / "exp" / "_size.yaml", {"base": "../shared/_root.yaml", "train": {"max_steps": 20}})
    write(tmp_path / "exp" / "_fast.yaml", {"train": {"lr": 0.5, "max_steps": 30}})
    child = write(tmp_path / "exp" / "run.yaml", {"base": ["_size.yaml", "_fast.yaml"],
                                                  "train": {"betas": [0.9, 0.95]}, "task": {"seq_len": 64}})
    raw = load_composed(child)
    assert "base" not in raw
    assert raw["train"] == {"lr": 0.5, "max_steps": 30, "betas": [0.9, 0.95]}  # later base wins; the file wins
    assert raw["task"] == {"name": "mqar", "seq_len": 64}


def test_a_cycle_of_bases_is_an_error_naming_the_chain(tmp_path, capsys):
    a = write(tmp_path / "a.yaml", {"base": "b.yaml", "train": {"lr": 0.1}})
    write(tmp_path / "b.yaml", {"base": "sub/c.yaml"})
    write(tmp_path / "sub" / "c.yaml", {"base": "../a.yaml"})
    with pytest.raises(ConfigError, match=r"bases form a cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_composed(a)
    selfish = write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_composed(selfish)
    # through the command line: exit status 2, the message, nothing written
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main([str(a), f"output_dir={tmp_path / 'out'}"]) == 2
    assert "bases form a cycle" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_diamond_of_bases_is_not_a_cycle(tmp_path):
    write(tmp_path / "_d.yaml", {"train": {"lr": 0.1, "seed": 1}})
    write(tmp_path / "_b.yaml", {"base": "_d.yaml", "train": {"seed": 2}})
    write(tmp_path / "_c.yaml", {"base": "_d.yaml", "train": {"max_steps": 3}})
    raw = load_composed(write(tmp_path / "a.yaml", {"base": ["_b.yaml", "_c.yaml"]}))
    # each base is composed whole, then merged in order: _c (with _d's seed 1 inside it) comes after _b
    assert raw == {"train": {"lr": 0.1, "seed": 1, "max_steps": 3}}


@pytest.mark.parametrize("base, message", [
    ("nope.yaml", r"base 'nope\.yaml': '.*nope\.yaml' does not exist"),
    (3, r"base: expected a file name or a list of file names \(relative to the file\), got 3"),
    ([], r"base: expected a file name or a list"),
    (["ok.yaml", None], r"base: expected a file name or a list"),
])
def test_bad_bases(tmp_path, base, message):
    write(tmp_path / "ok.yaml", {})
    with pytest.raises(ConfigError, match=message):
        load_composed(write(tmp_path / "c.yaml", {"base": base}))


def test_output_dir_defaults_to_the_file_name(tmp_path):
    assert default_output_dir(REPO / "configs" / "mqar" / "deltanet.yaml") == os.path.join("runs", "mqar", "deltanet")
    assert default_output_dir(REPO / "configs" / "demo.yaml") == os.path.join("runs", "demo")
    assert default_output_dir(tmp_path / "configs" / "a" / "b" / "x.yaml") == os.path.join("runs", "a", "b", "x")
    assert default_output_dir(tmp_path / "elsewhere" / "exp1.yaml") == os.path.join("runs", "exp1")
    path = REPO / "configs" / "mqar" / "transformer.yaml"
    assert load_config(path).output_dir == os.path.join("runs", "mqar", "transformer")
    assert load_config(path, ["output_dir=/tmp/x"]).output_dir == "/tmp/x"  # an override wins


def test_mqar_configs_share_one_base_and_differ_only_in_the_model_section():
    import seqzoo

    folder = REPO / "configs" / "mqar"
    # run configs: not the _*.yaml bases, not sweep files (a top-level `sweep` key, python -m seqzoo.eval.sweep)
    files = sorted(p for p in folder.glob("*.yaml")
                   if not p.name.startswith("_") and "sweep" not in (yaml.safe_load(p.read_text()) or {}))
    assert {"deltanet", "transformer", "transnormer"} <= {p.stem for p in files}
    raws = {p.stem: load_composed(p) for p in files}
    for p in files:
        text = yaml.safe_load(p.read_text())
        assert text["base"] == "_common.yaml" and set(text) == {"base", "model"}, p.name
        model_type = raws[p.stem]["model"]["model_type"]
        assert model_type in seqzoo.list_architectures(), p.name
        if p.stem in seqzoo.list_architectures():  # a file named after an architecture is that architecture
            assert model_type == p.stem, p.name
    first = next(iter(raws.values()))
    for name, raw in raws.items():
        assert {k: v for k, v in raw.items() if k != "model"} == {k: v for k, v in first.items() if k != "model"}
        assert {k: raw["model"][k] for k in ("hidden_size", "num_hidden_layers", "num_heads")} == \
            {"hidden_size": 64, "num_hidden_layers": 2, "num_heads": 2}, name


def test_the_resolved_config_of_a_run_is_complete_and_reruns_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "configs" / "_common.yaml", {
        "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2},
        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64,
                 "num_valid": 16, "num_test": 16},
        "train": {"max_steps": 2, "batch_size": 16, "log_every": 1, "report_to": ["none"], "progress_bar": False},
    })
    path = write(tmp_path / "configs" / "tiny.yaml", {"base": "_common.yaml", "model": {"model_type": "transformer"}})
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative to the working directory
    cfg = load_config(path)
    assert cfg.output_dir == os.path.join("runs", "tiny")
    train(cfg)
    written = tmp_path / "runs" / "tiny" / "run_config.yaml"
    saved = yaml.safe_load(written.read_text())
    assert "base" not in saved and saved["output_dir"] == os.path.join("runs", "tiny")
    assert saved["model"]["hidden_size"] == 32 and saved["task"]["num_train"] == 64
    assert saved["train"]["optimizer"] == "adamw"  # defaults filled in
    assert load_config(written).to_dict() == cfg.to_dict()
