"""The training loop: a short run learns and writes every output; kill-and-resume equals an uninterrupted run;
fine-tuning, Lion, bad configs and bad paths; a 2-process CPU run under accelerate launch."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import seqzoo  # noqa: F401
from seqzoo.config import ConfigError, apply_overrides, load_config, resolve
from seqzoo.optim import Lion, LRSchedule
from seqzoo.trainer import main, train

REPO = Path(__file__).resolve().parent.parent


def tiny_config(output_dir, cache_dir, **sections) -> dict:
    cfg = {
        "output_dir": str(output_dir),
        "model": {"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2},
        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_train": 256,
                 "num_valid": 32, "num_test": 64, "seed": 0},
        "train": {"max_steps": 30, "batch_size": 16, "lr": 1.0e-2, "warmup_steps": 3, "log_every": 5,
                  "report_to": ["none"], "progress_bar": False, "data_cache_dir": str(cache_dir)},
        "eval": {"every_steps": 15, "batch_size": 64},
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir: Path) -> list[tuple]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((r["type"], r.get("split"), r["step"], r["loss"], r.get("lr"), r.get("accuracy")))
    return out


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(autouse=True)
def _no_home_cache(cache_dir, monkeypatch):
    """Code paths without an explicit cache dir (the eval CLI) use $SEQZOO_CACHE: keep them out of ~/.cache."""
    monkeypatch.setenv("SEQZOO_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
    """One short run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = resolve(tiny_config(out, cache_dir, train={"checkpoint_every": 10, "keep_checkpoints": 2}))
    result = train(cfg)
    return out, result


def test_short_run_lowers_the_loss_and_writes_everything(trained_run):
    out, result = trained_run
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["type"] == "train"]
    assert [r["step"] for r in train_recs] == [5, 10, 15, 20, 25, 30]
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 0.3
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_recs)
    assert [r["step"] for r in recs if r["type"] == "eval"] == [15, 30]  # periodic valid, final test
    # outputs: resolved config, versions + hardware, eval.json, plot, final model + task settings
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["train"]["optimizer"] == "adamw" and resolved["task"]["power_a"] == 0.01  # defaults filled
    info = json.loads((out / "run_info.json").read_text())
    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"] == torch.__version__
    assert info["hardware"]["num_processes"] == 1 and info["hardware"]["cpu_count"] >= 1
    ev = json.loads((out / "eval.json").read_text())
    assert ev["split"] == "test" and ev["metrics"]["num_targets"] == 64 * 2
    assert ev["metrics"] == result["metrics"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # checkpoints at 10 and 20 (the last step is saved as final, not as a checkpoint), both kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    saved_task = json.loads((out / "final" / "seqzoo_task.json").read_text())
    assert saved_task == {"name": "mqar", **{k: v for k, v in resolved["task"].items() if k != "name"}}

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.model_type == "transformer" and model.config.vocab_size == 64
    assert (out / "final" / "model.safetensors").is_file()


def test_keep_last_k_checkpoints_and_tensorboard(tmp_path, cache_dir):
    out = tmp_path / "out"
    train(resolve(tiny_config(out, cache_dir, train={"max_steps": 9, "checkpoint_every": 2, "keep_checkpoints": 2,
                                                     "report_to": ["tensorboard"]}, eval={"every_steps": None})))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]
    assert list((out / "logs").rglob("events.out.tfevents*"))  # the TensorBoard tracker wrote its events


def test_wandb_asked_for_but_missing(tmp_path, cache_dir):
    from accelerate.utils import is_wandb_available

    if is_wandb_available():  # then it is a valid choice; nothing to check offline
        return
    with pytest.raises(ConfigError, match="train.report_to: 'wandb' asked for but the wandb package is not"):
        train(resolve(tiny_config(tmp_path / "w", cache_dir, train={"report_to": ["wandb"]})))
    assert not (tmp_path / "w").exists()


class Killed(Exception):
    pass


def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path, cache_dir):
    """Stop a run after step 7 (checkpoint at 4: the open log window, the epoch position, dropout RNG and the
    optimizer state all have to come back), resume it, and compare with a run that was never stopped."""
    sections = dict(
        model={"attention_dropout": 0.1},
        task={"num_train": 48},  # 48 / (8 * 2) = 3 optimizer steps per epoch: resuming lands mid-epoch
        train={"max_steps": 10, "batch_size": 8, "grad_accum": 2, "log_every": 3, "checkpoint_every": 4,
               "keep_checkpoints": 3, "lr_schedule": "linear"},
        eval={"every_steps": 5, "batch_size": 16},
    )
    straight = tmp_path / "straight"
    train(resolve(tiny_config(straight, cache_dir, **sections)))

    resumed = tmp_path / "resumed"
    cfg = resolve(tiny_config(resumed, cache_dir, **sections))

    def kill_at_7(step, record):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, callbacks=[kill_at_7])
    assert not (resumed / "final").exists()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step_00000004"]
    # without resume (or overwrite) the half-finished run is protected
    with pytest.raises(ConfigError, match="already holds a run.*train.resume=true"):
        train(cfg)
    raw = tiny_config(resumed, cache_dir, **sections)
    raw["train"]["resume"] = True
    train(resolve(raw))

    assert losses(resumed) == losses(straight)
    a = json.loads((straight / "eval.json").read_text())["metrics"]
    b = json.loads((resumed / "eval.json").read_text())["metrics"]
    assert a == b
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # resuming with different model settings is refused
    raw["model"]["hidden_size"] = 64
    with pytest.raises(ConfigError, match="model section differs.*hidden_size"):
        train(resolve(raw))


def test_finetune_from_pretrained_with_lion(trained_run, tmp_path, cache_dir):
    src, _ = trained_run
    out = tmp_path / "ft"
    raw = tiny_config(out, cache_dir, train={"max_steps": 4, "optimizer": "lion", "lr": 1.0e-4,
                                             "betas": [0.9, 0.99], "log_every": 1}, eval={"every_steps": None})
    raw["model"] = {"pretrained": str(src)}  # a run's output_dir: its final model is used
    result = train(resolve(raw))
    first = losses(out)[0][3]
    fresh = losses(src)[0][3]
    assert first < fresh - 0.3  # starts from the trained weights, not from scratch
    assert result["metrics"]["accuracy"] >= 0.0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.hidden_size == 32


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    from seqzoo.trainer import EpochSampler

    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    state = torch.get_rng_state()
    first = list(a)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (dropout's) is not touched
    assert first == list(b) and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(EpochSampler(50, seed=4)) != first


def test_lion_step_matches_the_paper():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    p0 = p.detach().clone()
    g1, g2 = torch.randn(5, 3), torch.randn(5, 3)
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    m = torch.zeros(5, 3)
    expect = p0.clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        c = 0.9 * m + 0.1 * g
        expect = expect * (1 - 0.1 * 0.5) - 0.1 * torch.sign(c)
        m = 0.99 * m + 0.01 * g
    assert torch.allclose(p.detach(), expect, atol=1e-6)
    with pytest.raises(ValueError, match="lr"):
        Lion([p], lr=-1.0)


def test_lr_schedules():
    cos = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    lin = LRSchedule("linear", total_steps=100, warmup_steps=0)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.5) and lin(100) == 0.0
    assert LRSchedule("constant", 100, 5)(80) == 1.0


def test_overrides_are_type_checked(tmp_path):
    base = tiny_config(tmp_path / "o", tmp_path / "c")
    cfg = resolve(apply_overrides(base, ["train.lr=3e-4", "train.betas=[0.9, 0.95]", "model.hidden_size=64",
                                         "eval.require={accuracy: 0.5}", "output_dir=/tmp/elsewhere",
                                         "train.checkpoint_every=null", "task.power_a=1"]))
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # "3e-4" is a string to PyYAML
    assert cfg.train.betas == [0.9, 0.95] and cfg.model["hidden_size"] == 64
    assert cfg.eval.require == {"accuracy": 0.5} and cfg.output_dir == "/tmp/elsewhere"
    assert cfg.train.checkpoint_every is None and cfg.task["power_a"] == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=fast"], r"train.lr: expected float, got 'fast'"),
    (["train.max_steps=2.5"], r"train.max_steps: expected int, got 2.5"),
    (["train.optimizer=sgd"], r"train.optimizer: expected one of 'adamw', 'lion', got 'sgd'"),
    (["train.learning_rate=1"], r"unknown key 'train.learning_rate'.*valid keys: .*lr"),
    (["train.lr_shedule=cosine"], r"did you mean 'lr_schedule'"),
    (["modle.hidden_size=3"], r"unknown key 'modle'.*valid keys: eval, model, output_dir, task, train"),
    (["model.hidden_sise=64"], r"unknown key 'model.hidden_sise'.*did you mean 'hidden_size'"),
    (["model.hidden_size=big"], r"model.hidden_size: expected int, got 'big'"),
    (["model.model_type=nope"], r"model.model_type: unknown architecture 'nope'; known: .*transformer"),
    (["model.num_heads=3"], r"model\.hidden_size \(32\) must be divisible by num_heads \(3\)"),
    (["task.name=nope"], r"unknown task 'nope'; known tasks: (.*, )?mqar\b"),
    (["task.seq_len=15"], r"task.seq_len: expected an even length"),
    (["task.vocab_size=100", "model.vocab_size=50"], r"model.vocab_size: the model has 50 token ids"),
    (["train.warmup_steps=31"], r"train.warmup_steps: expected 0 <= warmup_steps <= train.max_steps \(30\)"),
    (["train.report_to=[mlflow]"], r"train.report_to"),
    (["train.lr"], r"expected section.field=value"),
    (["train.batch_size=512"], r"train.batch_size: 512 x 1 process\(es\) needs at least 512 training examples, "
                               r"the task has 256"),
    (["model.pretrained=/no/such/dir"], r"model.pretrained: '/no/such/dir' is not a directory"),
])
def test_bad_configs_are_clear_errors_and_touch_nothing(tmp_path, cache_dir, capsys, overrides, message):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(out, cache_dir, train={"overwrite": True}))
    before = tree_digest(tmp_path)
    assert main([str(cfg), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqzoo-train: error: ")
    import re

    assert re.search(message, err), err
    assert tree_digest(tmp_path) == before


def test_bad_paths(tmp_path, cache_dir, capsys, trained_run):
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main([str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # output_dir is a file
    (tmp_path / "afile").write_text("x")
    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(tmp_path / "afile", cache_dir))
    assert main([str(cfg)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    # pretrained directory without config.json
    (tmp_path / "empty").mkdir()
    assert main([str(cfg), f"model.pretrained={tmp_path / 'empty'}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    # an output_dir holding another run's checkpoints is left untouched
    src, _ = trained_run
    before = tree_digest(src)
    cfg = write_yaml(tmp_path / "c2.yaml", tiny_config(src, cache_dir))
    assert main([str(cfg)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert tree_digest(src) == before


def test_overwrite_replaces_only_run_files(tmp_path, cache_dir):
    out = tmp_path / "out"
    cfg = tiny_config(out, cache_dir, train={"max_steps": 4, "checkpoint_every": 2}, eval={"every_steps": None})
    train(resolve(cfg))
    (out / "notes.txt").write_text("mine")
    cfg["train"].update(overwrite=True, max_steps=3, checkpoint_every=None)
    train(resolve(cfg))
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "checkpoints").exists()  # the old run's checkpoints are gone
    assert [r[2] for r in losses(out) if r[0] == "train"] == [3]


def test_eval_cli_round_trip(trained_run, tmp_path, capsys):
    from seqzoo.eval.__main__ import main as eval_main

    src, result = trained_run
    target = tmp_path / "m.json"
    assert eval_main(["--model", str(src / "final"), "--output", str(target)]) == 0  # task from seqzoo_task.json
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(target.read_text())
    assert printed == written
    assert written["task"]["name"] == "mqar" and written["num_examples"] == 64
    assert written["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"], abs=1e-12)
    assert written["metrics"]["loss"] == pytest.approx(result["metrics"]["loss"], rel=1e-5)
    # flags override the saved settings; the default output goes beside the model
    assert eval_main(["--model", str(src), "--task", "mqar", "--task.num_test=8", "--batch-size", "4"]) == 0
    out = json.loads((src / "final" / "eval_mqar_test.json").read_text())
    assert out["num_examples"] == 8 and out["task"]["seq_len"] == 16
    capsys.readouterr()
    # errors name the flag
    assert eval_main(["--model", str(tmp_path / "none")]) == 2
    assert "--model" in capsys.readouterr().err
    assert eval_main(["--model", str(src), "--task.seq_len=63"]) == 2
    assert "task.seq_len: expected an even length" in capsys.readouterr().err
    assert eval_main(["--model", str(src), "--task.vocab_size=128"]) == 2
    assert "vocab_size" in capsys.readouterr().err
    assert eval_main(["--model", str(src), "--task", "nope"]) == 2
    assert "--task: unknown task 'nope'; known tasks: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--model", str(src), "--bogus"])


def _worker_tracebacks(stderr: str) -> list[str]:
    """The Python tracebacks in a launch's stderr other than the launchers' reports that a worker died (torch's
    ``ChildFailedError``, then accelerate's launch command failing): a worker's own Python error, as opposed to
    an abort in the C++ runtime."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if "ChildFailedError" not in b and "accelerate/commands/launch.py" not in b]


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path, cache_dir):
    """accelerate launch --num_processes 2 --cpu: data parallel over gloo, one loadable model."""
    out = tmp_path / "ddp"
    cfg = write_yaml(tmp_path / "ddp.yaml", tiny_config(out, cache_dir, train={"max_steps": 6, "log_every": 2,
                                                                               "checkpoint_every": 3},
                                                        eval={"every_steps": 3}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port: other test runs may be using accelerate's default 29500
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "--cpu",
           str(REPO / "train.py"), str(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    if res.returncode != 0 and "(SIGABRT)" in res.stderr and not _worker_tracebacks(res.stderr):
        # A worker killed by an abort inside the C++ runtime (gloo/OpenMP), not by a Python error of ours: seen
        # once on a loaded CI machine and never reproduced. Rerun once and keep the first log beside the run.
        (tmp_path / "first_attempt.log").write_text(res.stdout + "\n" + res.stderr)
        warnings.warn("two-process run: a worker aborted (SIGABRT) in the C++ runtime; rerunning once")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    if res.returncode != 0:
        errors = [line for line in res.stderr.splitlines()
                  if any(w in line for w in ("Error", "error:", "terminate", "Traceback", "Abort", "what()"))]
        pytest.fail("two-process run failed; error lines:\n" + "\n".join(errors[:40]) + "\n--- stdout tail:\n"
                    + res.stdout[-2000:] + "\n--- stderr tail:\n" + res.stderr[-2000:])
    info = json.loads((out / "run_info.json").read_text())
    assert info["hardware"]["num_processes"] == 2
    recs = losses(out)
    assert [r[2] for r in recs if r[0] == "train"] == [2, 4, 6]
    # each step reads batch_size examples on each of the 2 processes
    tokens = [json.loads(line)["tokens"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    assert tokens == [2 * 2 * 16 * 16, 4 * 2 * 16 * 16, 6 * 2 * 16 * 16]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_processes"] == 2 and ev["metrics"]["num_targets"] == 64 * 2  # every test example once
    assert (out / "checkpoints" / "step_00000003" / "random_states_1.pkl").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.model_type == "transformer"


@pytest.mark.slow
def test_sigkill_and_resume_in_a_subprocess(tmp_path, cache_dir):
    """The real thing: SIGKILL a training process mid-run (whatever it was writing), resume it, and get the
    losses of an uninterrupted run."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    over = ["train.max_steps=40", "train.checkpoint_every=6", "train.log_every=1", "eval.every_steps=null"]

    def cmd(out, *extra):
        cfg = write_yaml(tmp_path / f"{out.name}.yaml", tiny_config(out, cache_dir))
        return [sys.executable, str(REPO / "train.py"), str(cfg), *over, *extra]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run(cmd(straight), env=env, capture_output=True, timeout=240).returncode == 0
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            metrics = killed / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (killed / "final").exists() and list((killed / "checkpoints").glob("step_*"))
    res = subprocess.run(cmd(killed, "train.resume=true"), env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    assert losses(killed) == losses(straight)
