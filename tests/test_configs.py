"""Every shipped experiment config resolves (keys, types, architecture fields) and builds its model the way
the trainer does (tiny datasets: the task's split sizes are overridden, nothing is trained)."""

import glob
import os

import pytest

import seqzoo
from seqzoo.config import load_config
from seqzoo.trainer import build_model, build_model_config, build_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# runnable configs; files named _*.yaml are bases that others include (configs/mqar/_common.yaml)
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("_"))


def test_there_is_a_config_for_every_architecture():
    names = {os.path.basename(p)[:-5] for p in CONFIGS if os.sep + "mqar" + os.sep in p}
    assert set(seqzoo.list_architectures()) <= names, names
    assert os.path.join(ROOT, "configs", "demo.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_resolves_and_builds_its_model(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}"])
    task = build_task(cfg)
    model = build_model(cfg, build_model_config(cfg, task), task)
    assert model.config.model_type == cfg.model["model_type"]
    assert sum(p.numel() for p in model.parameters()) > 0
