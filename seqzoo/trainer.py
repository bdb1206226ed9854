"""The training loop, on Accelerate: ``python train.py CONFIG.yaml [section.field=value ...]``.

What a run does, top to bottom:

1. resolve the config (``seqzoo.config``: every key and type checked), build the task and the model config and
   check them against each other, check ``output_dir`` — all before anything is written, so a bad config or
   a bad path leaves existing files untouched;
2. write ``run_config.yaml`` (the resolved config), ``run_info.json`` (package versions, hardware, command);
3. train: AdamW or Lion, warmup + cosine/linear decay, gradient accumulation, clipping, mixed precision;
   a log line every ``train.log_every`` steps (``metrics.jsonl``, trackers, the tqdm bar), a validation pass
   every ``eval.every_steps``, an Accelerate checkpoint every ``train.checkpoint_every`` steps;
4. save the final model with ``save_pretrained`` to ``output_dir/final`` (+ tokenizer when the task has one,
   + ``seqzoo_task.json``, the task settings the eval CLI uses by default), evaluate it on the test split,
   write ``eval.json`` and ``curves.png``, print a one-line summary.

Resuming (``train.resume=true``) loads the newest checkpoint: model, optimizer, scheduler, RNG states and the
trainer state (step, data position, the partial log window). The data order is a pure function of
(seed, epoch), and the position in it is derived from the step, so on CPU a run that is killed and resumed
logs exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError, RunConfig, dump_yaml, load_config
from .eval.base import atomic_write_text

CHECKPOINT_PREFIX = "step_"
RUN_FILES = ("run_config.yaml", "run_info.json", "metrics.jsonl", "eval.json", "curves.png")
RUN_DIRS = ("checkpoints", "final", "logs")


# --------------------------------------------------------------------------------------------------------------
# data order
# --------------------------------------------------------------------------------------------------------------


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order of ``range(n)`` that depends only on (seed, epoch): ``set_epoch`` picks the epoch.
    It draws from its own generator, never from torch's global one, so iterating does not disturb the RNG
    state that dropout uses (and that checkpoints restore)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


# --------------------------------------------------------------------------------------------------------------
# trainer state (checkpointed with the Accelerate state)
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens read so far (all processes)
    # the open log window: summed micro-batch losses since the last log line (all processes)
    window_loss_sum: float = 0.0
    window_loss_count: int = 0
    window_tokens: int = 0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# --------------------------------------------------------------------------------------------------------------
# output directory
# --------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (``checkpoints/step_NNNNNNNN``), oldest first; temporary folders are ignored."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    out = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
           and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(out, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def existing_run(output_dir: Path) -> list[str]:
    """What in ``output_dir`` belongs to a previous run (empty when nothing)."""
    found = [str(p.relative_to(output_dir)) for p in list_checkpoints(output_dir)]
    for name in ("final", "metrics.jsonl", "eval.json"):
        if (output_dir / name).exists():
            found.append(name)
    return found


def check_output_dir(cfg: RunConfig) -> None:
    """Refuse to write into an output_dir that holds another run, unless resuming or overwriting; check the
    path is usable. Writes nothing."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {cfg.output_dir!r} exists and is not a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: cannot create or write {cfg.output_dir!r} ({str(parent)!r} is not a "
                          f"writable directory)")
    found = existing_run(out) if out.is_dir() else []
    if found and not cfg.train.resume and not cfg.train.overwrite:
        raise ConfigError(
            f"output_dir: {cfg.output_dir!r} already holds a run ({', '.join(found[:4])}); pass train.resume=true "
            f"to continue it, train.overwrite=true to replace it, or choose another output_dir")
    if cfg.train.resume and found:
        saved = out / "run_config.yaml"
        if saved.is_file():
            import yaml

            old = yaml.safe_load(saved.read_text()) or {}
            for section in ("model", "task"):
                if old.get(section) != cfg.to_dict()[section]:
                    diff = sorted(k for k in set(old.get(section) or {}) | set(cfg.to_dict()[section])
                                  if (old.get(section) or {}).get(k) != cfg.to_dict()[section].get(k))
                    raise ConfigError(
                        f"train.resume: the {section} section differs from the run in {cfg.output_dir!r} "
                        f"(fields: {', '.join(diff)}); resume with the same {section} settings, or use "
                        f"train.overwrite=true / another output_dir to start a new run")


def clear_previous_run(out: Path) -> None:
    """train.overwrite: remove what a previous run wrote (only the files and folders a run creates)."""
    for name in RUN_DIRS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).unlink()


# --------------------------------------------------------------------------------------------------------------
# run info
# --------------------------------------------------------------------------------------------------------------


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("seqzoo", "torch", "transformers", "accelerate", "datasets", "safetensors", "numpy", "triton",
                "tensorboard", "wandb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def hardware_info(accelerator) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_commit() -> str | None:
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------------------
# metrics file and plot
# --------------------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: dropped
                continue
    return out


def plot_curves(records: list[dict], path: Path, title: str) -> None:
    """Train loss, validation loss and accuracy against the step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "eval" and r.get("split") == "valid"]
    test = [r for r in records if r.get("type") == "eval" and r.get("split") == "test"]
    metric_keys = sorted({k for r in valid + test for k in r if k not in ("type", "split", "step", "loss",
                                                                          "num_targets", "elapsed_s")})
    ncols = 1 + len(metric_keys)
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if valid:
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss", ms=3)
    if test:
        ax.plot([r["step"] for r in test], [r["loss"] for r in test], "*", label="test loss", ms=9)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    for i, key in enumerate(metric_keys, start=1):
        ax = axes[0][i]
        pts = [r for r in valid if key in r]
        if pts:
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], "o-", label=f"valid {key}", ms=3)
        pts = [r for r in test if key in r]
        if pts:
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], "*", label=f"test {key}", ms=9)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# building the pieces
# --------------------------------------------------------------------------------------------------------------


def build_task(cfg: RunConfig):
    from .eval import get_task

    settings = {k: v for k, v in cfg.task.items() if k != "name"}
    return get_task(cfg.task["name"], settings, cache_dir=cfg.train.data_cache_dir)


def build_model_config(cfg: RunConfig, task):
    """The model config: the model section's fields, with the task's defaults (vocab_size, sequence length,
    num_labels, special tokens) where the section does not set them; checked against the task."""
    import transformers

    fields = {k: v for k, v in cfg.model.items() if k not in ("model_type", "pretrained")}
    try:
        if "pretrained" in cfg.model:
            config = transformers.AutoConfig.from_pretrained(cfg.model["pretrained"], **fields)
        else:
            for k, v in task.model_config_defaults().items():
                fields.setdefault(k, v)
            config = transformers.AutoConfig.for_model(cfg.model["model_type"], **fields)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    if task.head == "classification" and "pretrained" in cfg.model and getattr(config, "num_labels", None) is None:
        config.num_labels = task.num_labels
    task.check_model_config(config)
    return config


def build_model(cfg: RunConfig, config, task):
    auto = task.auto_model_class()
    if "pretrained" in cfg.model:
        fields = {k: v for k, v in cfg.model.items() if k not in ("model_type", "pretrained")}
        extra = {"num_labels": task.num_labels} if task.head == "classification" else {}
        with _quiet_transformers():
            return auto.from_pretrained(cfg.model["pretrained"], **fields, **extra)
    return auto.from_config(config)


def resolve_trackers(cfg: RunConfig) -> list[str]:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    wanted = [t for t in cfg.train.report_to if t != "none"]
    out = []
    for t in wanted:
        if t == "auto":
            if is_tensorboard_available():
                out.append("tensorboard")
        elif t == "tensorboard":
            if not is_tensorboard_available():
                raise ConfigError("train.report_to: 'tensorboard' asked for but the tensorboard package is not "
                                  "installed (pip install tensorboard), or drop it from train.report_to")
            out.append("tensorboard")
        elif t == "wandb":
            if not is_wandb_available():
                raise ConfigError("train.report_to: 'wandb' asked for but the wandb package is not installed "
                                  "(pip install wandb)")
            out.append("wandb")
    return sorted(set(out))


def mixed_precision_for(precision: str) -> str:
    if precision == "fp32":
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def flat_hparams(d: dict, prefix: str = "") -> dict:
    """A flat {section/field: scalar} view of the config (TensorBoard's hparams take only scalars)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# --------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------


def train(cfg: RunConfig, callbacks: list[Callable[[int, dict], None]] | None = None) -> dict:
    """Train according to ``cfg``; returns the final test metrics. ``callbacks`` are called as
    ``fn(step, record)`` after every optimizer step (``record`` is the log line of that step, or ``{}``)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    import seqzoo  # noqa: F401  (registers the architectures)

    t_start = time.time()
    out = Path(cfg.output_dir)
    tc, ec = cfg.train, cfg.eval

    # ---- everything that can fail on bad input, before anything is written -------------------------------
    task = build_task(cfg)
    model_config = build_model_config(cfg, task)
    check_output_dir(cfg)
    trackers = resolve_trackers(cfg)
    if tc.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 autocast needs a GPU; use fp32 or bf16 on CPU")

    accelerator = Accelerator(
        # without a GPU, run on CPU explicitly: under torchrun / accelerate launch --multi_gpu this makes
        # Accelerate use gloo (MULTI_CPU) instead of starting independent single-process runs
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision_for(tc.precision),
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    main_proc = accelerator.is_main_process
    per_step = tc.batch_size * accelerator.num_processes
    n_train = task.split_size("train")
    if n_train is not None and n_train < per_step:
        raise ConfigError(f"train.batch_size: {tc.batch_size} x {accelerator.num_processes} process(es) needs at "
                          f"least {per_step} training examples, the task has {n_train}")
    resume_from = None
    if tc.resume:
        ckpts = list_checkpoints(out)
        if ckpts:
            resume_from = ckpts[-1]
            saved_procs = len(list(resume_from.glob("random_states_*.pkl")))
            if saved_procs and saved_procs != accelerator.num_processes:
                raise ConfigError(f"train.resume: {resume_from} was written by {saved_procs} process(es), this "
                                  f"run has {accelerator.num_processes}; resume with the same number of processes")
        elif main_proc:
            print(f"seqzoo: train.resume=true but {out} has no checkpoint; starting from step 0", flush=True)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        if tc.overwrite and not resume_from:
            clear_previous_run(out)
        atomic_write_text(out / "run_config.yaml", dump_yaml(cfg.to_dict()))
        atomic_write_text(out / "run_info.json", json.dumps({
            "versions": package_versions(),
            "hardware": hardware_info(accelerator),
            "git_commit": git_commit(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "resumed_from": str(resume_from) if resume_from else None,
        }, indent=2) + "\n")
    accelerator.wait_for_everyone()

    # ---- data ------------------------------------------------------------------------------------------------
    with accelerator.main_process_first():  # the first process generates and caches, the others read
        train_ds = task.dataset("train")
        valid_ds = task.dataset("valid")
        test_ds = task.dataset("test")
    if len(train_ds) < per_step:
        raise ConfigError(f"train.batch_size: {tc.batch_size} x {accelerator.num_processes} process(es) needs at "
                          f"least {per_step} training examples, the task has {len(train_ds)}")
    sampler = EpochSampler(len(train_ds), tc.seed)
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=tc.batch_size, sampler=sampler, drop_last=True, collate_fn=task.collate,
        num_workers=tc.num_workers, generator=torch.Generator().manual_seed(tc.seed))

    # ---- model, optimizer, schedule -------------------------------------------------------------------------
    from .optim import build_optimizer, build_scheduler

    set_seed(tc.seed)
    model = build_model(cfg, model_config, task)
    optimizer = build_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, tuple(tc.betas), tc.eps)
    scheduler = build_scheduler(optimizer, tc.lr_schedule, tc.max_steps, tc.warmup_steps, tc.min_lr_ratio)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    state = TrainState()
    # the scheduler is stepped once per optimizer step by this loop (not prepared: Accelerate would step it
    # once per process); it and the trainer state travel with the checkpoint
    accelerator.register_for_checkpointing(scheduler, state)
    batches_per_epoch = len(train_dl)

    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if main_proc:
            kept = [r for r in read_metrics(out / "metrics.jsonl") if r.get("step", 0) <= state.step
                    and r.get("split") != "test"]
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
            print(f"seqzoo: resumed from {resume_from} (step {state.step})", flush=True)
    elif main_proc and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()

    if trackers:
        accelerator.init_trackers(tc.project, config=flat_hparams(cfg.to_dict()))

    unwrapped = accelerator.unwrap_model(model)
    n_params = sum(p.numel() for p in unwrapped.parameters())
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)

    def run_eval(split: str, ds, max_batches) -> dict:
        from .eval.evaluate import eval_loader, evaluate

        loader = eval_loader(task, ds, ec.batch_size, accelerator.process_index, accelerator.num_processes)
        # the wrapped model: under FSDP only it holds whole parameters; every process runs the same batches
        return evaluate(model, task, loader, device=accelerator.device, max_batches=max_batches,
                        autocast_dtype=autocast_dtype, reduce=lambda t: accelerator.reduce(t, "sum"))

    def write_record(record: dict) -> None:
        if main_proc:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def save_checkpoint() -> None:
        folder = out / "checkpoints"
        final = folder / f"{CHECKPOINT_PREFIX}{state.step:08d}"
        tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{state.step:08d}"
        if main_proc:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main_proc:
            atomic_write_text(tmp / "trainer_state.json", json.dumps(state.state_dict(), indent=2) + "\n")
            if final.exists():  # the same step saved before (a resumed run reaching it again)
                shutil.rmtree(final)
            os.rename(tmp, final)
            for old in list_checkpoints(out)[: -tc.keep_checkpoints]:
                doomed = old.with_name(f".del-{old.name}")
                os.rename(old, doomed)
                shutil.rmtree(doomed)
        accelerator.wait_for_everyone()

    # ---- train ------------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    if main_proc:
        eff = tc.batch_size * tc.grad_accum * accelerator.num_processes
        print(f"seqzoo: {cfg.model['model_type']} ({n_params / 1e6:.2f}M params) on {task.name} | "
              f"{tc.max_steps} steps x {eff} examples | {accelerator.num_processes} process(es) on "
              f"{accelerator.device}, precision {accelerator.mixed_precision} | output {out}", flush=True)
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not (main_proc and tc.progress_bar),
               desc="train", dynamic_ncols=True, mininterval=0.5)

    micro = state.step * tc.grad_accum  # micro-batches consumed so far: the data position
    epoch, skip = divmod(micro, batches_per_epoch)

    def micro_batches():
        nonlocal epoch, skip
        while True:
            loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
            skip = 0
            # Accelerate's loader re-sets its sampler's epoch from its own counter when iterated: set both
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = micro_batches()
    model.train()
    t_window = time.time()
    callbacks = list(callbacks or [])
    while state.step < tc.max_steps:
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        tokens = 0
        for i in range(tc.grad_accum):
            batch = next(stream)
            last = i == tc.grad_accum - 1
            # no gradient all-reduce on the micro-batches before the last one
            ctx = accelerator.no_sync(model) if not last else contextlib.nullcontext()
            with ctx:
                out_ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"])
                loss = out_.loss
                accelerator.backward(loss / tc.grad_accum)
            loss_sum += loss.detach().double()
            tokens += task.num_target_tokens(batch)
        grad_norm = None
        if tc.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)

        # losses and tokens of all processes
        stats = accelerator.reduce(torch.tensor([float(loss_sum), float(tc.grad_accum), float(tokens)],
                                                dtype=torch.float64, device=accelerator.device), "sum")
        state.window_loss_sum += float(stats[0])
        state.window_loss_count += int(stats[1])
        state.window_tokens += int(stats[2])
        state.tokens += int(stats[2])

        record: dict = {}
        if state.step % tc.log_every == 0 or state.step == tc.max_steps:
            elapsed = time.time() - t_window
            record = {"type": "train", "step": state.step,
                      "loss": state.window_loss_sum / max(1, state.window_loss_count), "lr": lr,
                      "tokens": state.tokens, "tokens_per_s": state.window_tokens / max(elapsed, 1e-9),
                      "elapsed_s": time.time() - t_start}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            write_record(record)
            accelerator.log({f"train/{k}": v for k, v in record.items() if k not in ("type", "step")},
                            step=state.step)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
            state.window_loss_sum, state.window_loss_count, state.window_tokens = 0.0, 0, 0
            t_window = time.time()
        if ec.every_steps and state.step % ec.every_steps == 0 and state.step < tc.max_steps:
            metrics = run_eval("valid", valid_ds, ec.max_batches)
            rec = {"type": "eval", "split": "valid", "step": state.step, **metrics}
            write_record(rec)
            accelerator.log({f"valid/{k}": v for k, v in metrics.items()}, step=state.step)
            if main_proc:
                bar.write(f"step {state.step}: valid " + ", ".join(
                    f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 and state.step < tc.max_steps:
            save_checkpoint()
        for fn in callbacks:
            fn(state.step, record)
    bar.close()
    train_time = time.time() - t_start

    # ---- final model, test metrics, plot, summary ---------------------------------------------------------
    accelerator.wait_for_everyone()
    final_dir = out / "final"
    full_state = accelerator.get_state_dict(model)  # collective under FSDP: gathers the full weights
    if main_proc:
        tmp = out / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        with _quiet_transformers():
            unwrapped.save_pretrained(str(tmp), state_dict=full_state, safe_serialization=True)
        tok = task.tokenizer()
        if tok is not None:
            tok.save_pretrained(str(tmp))
        task.save_settings(tmp)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.rename(tmp, final_dir)
    accelerator.wait_for_everyone()

    test = run_eval("test", test_ds, None)
    write_record({"type": "eval", "split": "test", "step": state.step, **test})
    accelerator.log({f"test/{k}": v for k, v in test.items()}, step=state.step)
    result = {"task": task.settings_dict(), "split": "test", "step": state.step, "metrics": test,
              "model": str(final_dir), "train_time_s": train_time, "num_processes": accelerator.num_processes}
    if main_proc:
        atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
        try:
            plot_curves(read_metrics(out / "metrics.jsonl"), out / "curves.png",
                        f"{cfg.model['model_type']} on {task.name}")
        except Exception as e:  # a plot must never lose a finished run
            print(f"seqzoo: could not draw curves.png: {e}", file=sys.stderr)
    if trackers:
        accelerator.end_training()

    failed = [(k, test.get(k), v) for k, v in ec.require.items()
              if not (isinstance(test.get(k), float) and test[k] >= v)]
    result["require_failed"] = [k for k, _, _ in failed]
    if main_proc:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
        line = (f"seqzoo: {task.name} test {shown} ({test.get('num_targets', 0)} targets) | {state.step} steps "
                f"in {train_time:.0f}s | model {final_dir}")
        print(line, flush=True)
        for k, v in ec.require.items():
            got = test.get(k)
            ok = isinstance(got, float) and got >= v
            print(f"seqzoo: required {k} >= {v}: {'PASS' if ok else 'FAIL'} (got "
                  f"{got if not isinstance(got, float) else round(got, 4)})", flush=True)
    return result


@contextlib.contextmanager
def _quiet_transformers():
    """No "Writing model shards" bar for a one-file model."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seqzoo-train",
        description="Train a seqzoo model on a task. Example: python train.py configs/demo.yaml train.lr=3e-4",
        epilog="Overrides: section.field=value for section in model, task, train, eval (and output_dir=PATH). "
               "See docs/training.md.")
    p.add_argument("config", help="the experiment YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="section.field=value overrides")
    return p.parse_args(argv)


def requested_cpu_processes() -> int:
    """How many processes ``accelerate launch --cpu --num_processes N`` asked for, when it started only this one.

    Accelerate's CPU multi-process launcher is ``mpirun`` (``--mpirun_hostfile``); without it, ``--cpu`` with
    ``--num_processes N`` runs the script once, with ``ACCELERATE_USE_CPU`` and ``MASTER_ADDR`` set but no
    rank variables, and the job would silently train on one process. Returns N in exactly that situation (N
    read from the launcher's command line, or from its Accelerate config file), else 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        return 1
    if "MASTER_ADDR" not in env or any(k in env for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "PMI_SIZE",
                                                            "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return 1
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 1
    if not any("accelerate" in a for a in args):
        return 1
    value, config_file = None, None
    for i, a in enumerate(args):
        for flag in ("--num_processes", "--num-processes", "--config_file", "--config-file"):
            if a == flag and i + 1 < len(args):
                v = args[i + 1]
            elif a.startswith(flag + "="):
                v = a.split("=", 1)[1]
            else:
                continue
            if "num" in flag:
                value = v
            else:
                config_file = v
    if value is None:
        import yaml

        from accelerate.commands.config import default_config_file

        path = Path(config_file or default_config_file)
        try:
            value = (yaml.safe_load(path.read_text()) or {}).get("num_processes")
        except (OSError, yaml.YAMLError):
            value = None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 1
    return n if n > 1 else 1


def spawn_cpu_processes(n: int, argv: list[str]) -> int:
    """Run this training command on ``n`` CPU processes (gloo) through ``torch.distributed.run``."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1"),
           "--master_port", os.environ.get("MASTER_PORT", "29500"), "-m", "seqzoo.trainer", *argv]
    print(f"seqzoo: accelerate launch --cpu asked for {n} processes; starting them with torch.distributed.run "
          f"(gloo)", flush=True)
    return subprocess.run(cmd, env=dict(os.environ)).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    n = requested_cpu_processes()
    if n > 1:
        try:
            load_config(args.config, args.overrides)  # a bad config fails here, once, not in every worker
        except ConfigError as e:
            print(f"seqzoo-train: error: {e}", file=sys.stderr)
            return 2
        return spawn_cpu_processes(n, argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = train(cfg)
    except ConfigError as e:
        print(f"seqzoo-train: error: {e}", file=sys.stderr)
        return 2
    return 1 if result.get("require_failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
