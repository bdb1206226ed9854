"""The training loop, on Accelerate: ``python train.py CONFIG.yaml [section.field=value ...]``.

What a run does, top to bottom:

1. resolve the config (``seqzoo.config``: every key and type checked), build the task and the model config and
   check them against each other, check ``output_dir`` — all before anything is written, so a bad config or
   a bad path leaves existing files untouched;
2. write ``run_config.yaml`` (the resolved config), ``run_info.json`` (package versions, hardware, command);
3. train (:class:`StepLoop`): AdamW or Lion, warmup + cosine/linear decay, gradient accumulation, clipping,
   mixed precision (:func:`optimizer_step`; the model is called only through ``task.step``, so the task's head
   decides what a batch means); a log line every ``train.log_every`` steps (:class:`MetricsLog`:
   ``metrics.jsonl`` and the trackers; the tqdm bar), a validation pass every ``eval.every_steps``, an
   Accelerate checkpoint every ``train.checkpoint_every`` steps (:class:`Checkpointer`);
4. save the final model through the task's head to ``output_dir/final`` (``save_pretrained`` for the built-in
   heads; + tokenizer when the task has one, + ``seqzoo_task.json``, the task settings the eval CLI uses by
   default), evaluate it on the test split, write ``eval.json`` and ``curves.png``, print a one-line summary.

Resuming (``train.resume=true``) loads the newest checkpoint: model, optimizer, scheduler, RNG states and the
trainer state (step, data position, the partial log window). The data order is a pure function of
(seed, epoch), and the position in it is derived from the step (:class:`TrainStream`), so on CPU a run that is
killed and resumed logs exactly the losses of an uninterrupted run.
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
from typing import Callable, Iterable, Iterator

import torch

from . import config as config_lib
from .common import ConfigError, atomic_write_text, resolve_precision
from .config import MODEL_META_KEYS, RunConfig, TrainConfig, dump_yaml, load_config

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

    def add(self, loss_sum: float, micro_batches: int, tokens: int) -> None:
        """Count one optimizer step's summed micro-batch losses and tokens (already summed over processes)."""
        self.window_loss_sum += loss_sum
        self.window_loss_count += micro_batches
        self.window_tokens += tokens
        self.tokens += tokens

    def close_window(self) -> tuple[float, int]:
        """The mean loss and the tokens of the open log window; opens a new one."""
        mean = self.window_loss_sum / max(1, self.window_loss_count)
        tokens = self.window_tokens
        self.window_loss_sum, self.window_loss_count, self.window_tokens = 0.0, 0, 0
        return mean, tokens


# --------------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (``checkpoints/step_NNNNNNNN``), oldest first; temporary folders are ignored."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    out = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
           and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(out, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class Checkpointer:
    """``output_dir/checkpoints/step_NNNNNNNN``: the Accelerate state (model, optimizer, the objects registered
    with ``register_for_checkpointing``: scheduler and :class:`TrainState`, one RNG file per process) plus a
    readable ``trainer_state.json``. A checkpoint is written to a temporary folder and renamed into place, so a
    killed run never leaves a half-written ``step_*`` that a resume would pick up; the newest ``keep`` stay.
    Every process calls :meth:`save` (Accelerate's save is collective); only the main one touches folders."""

    def __init__(self, accelerator, output_dir: Path, keep: int):
        self.accelerator, self.output_dir, self.keep = accelerator, Path(output_dir), keep

    @property
    def folder(self) -> Path:
        return self.output_dir / "checkpoints"

    def list(self) -> list[Path]:
        return list_checkpoints(self.output_dir)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    @staticmethod
    def num_processes(path: Path) -> int:
        """How many processes wrote checkpoint ``path`` (its RNG files); 0 when unknown."""
        return len(list(Path(path).glob("random_states_*.pkl")))

    def save(self, state: TrainState) -> Path:
        acc = self.accelerator
        main = acc.is_main_process
        final = self.folder / f"{CHECKPOINT_PREFIX}{state.step:08d}"
        tmp = self.folder / f".tmp-{CHECKPOINT_PREFIX}{state.step:08d}"
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if main:
            atomic_write_text(tmp / "trainer_state.json", json.dumps(state.state_dict(), indent=2) + "\n")
            if final.exists():  # the same step saved before (a resumed run reaching it again)
                shutil.rmtree(final)
            os.rename(tmp, final)
            for old in self.list()[: -self.keep]:
                doomed = old.with_name(f".del-{old.name}")  # renamed first: a half-deleted folder is never listed
                os.rename(old, doomed)
                shutil.rmtree(doomed)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> None:
        """Restore everything :meth:`save` wrote (the registered objects included) from ``path``."""
        self.accelerator.load_state(str(path))


# --------------------------------------------------------------------------------------------------------------
# output directory
# --------------------------------------------------------------------------------------------------------------


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


class MetricsLog:
    """``metrics.jsonl``, one JSON record per line (``{"type": "train", "step", "loss", ...}`` or
    ``{"type": "eval", "split", "step", ...}``), and the trackers. Only the main process writes the file
    (``enabled``); each line is flushed as it is written, so a killed run loses at most the line it was writing,
    which :func:`read_metrics` drops. ``tracker(values, step=)`` (``accelerator.log``) gets every record's
    scalars as ``train/loss``, ``valid/accuracy``, ``test/loss``, ..."""

    def __init__(self, path: Path, enabled: bool = True, tracker: Callable[..., None] | None = None):
        self.path, self.enabled, self.tracker = Path(path), enabled, tracker

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        if self.tracker is not None:
            prefix = "train" if record.get("type") == "train" else record.get("split", "eval")
            self.tracker({f"{prefix}/{k}": v for k, v in record.items() if k not in ("type", "split", "step")},
                         step=record["step"])

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def cut_back(self, step: int) -> None:
        """Resuming at ``step``: keep the records up to it, drop the later ones and any final test record (the
        resumed run writes them again). Rewritten atomically."""
        if self.enabled:
            kept = [r for r in self.read() if r.get("step", 0) <= step and r.get("split") != "test"]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def clear(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()


def plot_curves(records: list[dict], path: Path, title: str, primary: str | None = None) -> None:
    """Loss, and the task's primary metric (train values too where the task derives them from the loss, e.g.
    bits per byte), for train / valid / test against the number of training tokens (the step for records
    written without it), as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "eval" and r.get("split") == "valid"]
    test = [r for r in records if r.get("type") == "eval" and r.get("split") == "test"]
    use_tokens = all("tokens" in r for r in train + valid + test) and bool(train + valid + test)
    xkey = "tokens" if use_tokens else "step"
    if primary is None:  # the first metric besides the loss
        primary = next((k for r in valid + test for k in r if k not in (
            "type", "split", "step", "tokens", "loss", "num_targets", "elapsed_s") and "/" not in k), None)
    keys = ["loss"] + ([primary] if primary and primary != "loss" else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for rows, style, label in ((train, "-", "train"), (valid, "o-", "valid"), (test, "*", "test")):
            pts = [(r[xkey], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{label} {key}", lw=1, ms=3 if style == "o-" else 9)
        ax.set_xlabel("training tokens" if use_tokens else "step")
        ax.set_ylabel("loss (nats)" if key == "loss" else key)
        if key == "loss":
            ax.set_yscale("log")
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
    """The model config of the run: :func:`seqzoo.config.build_model_config` (the section's fields over the
    task's defaults, checked by the architecture and against the task)."""
    return config_lib.build_model_config(cfg.model, task)


def build_model(cfg: RunConfig, config, task):
    """The task's model (its head's): loaded from ``model.pretrained`` with the section's fields as overrides,
    or freshly initialized from ``config``."""
    if "pretrained" in cfg.model:
        fields = {k: v for k, v in cfg.model.items() if k not in MODEL_META_KEYS}
        return task.load_model(cfg.model["pretrained"], **fields)
    return task.build_model(config)


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
    """Accelerate's ``mixed_precision`` for ``train.precision`` on this machine (see
    :func:`seqzoo.common.resolve_precision`)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(precision, device_type)]


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
# the step loop
# --------------------------------------------------------------------------------------------------------------


class TrainStream:
    """The training micro-batches, endless, from data position ``start`` (micro-batches consumed so far) on.
    Epoch ``e`` is the sampler's order for (seed, e); a start inside an epoch skips that epoch's first batches,
    so the stream from any start is the tail of the stream from 0 (what makes a resumed run see the data an
    uninterrupted run sees). ``loader`` is the Accelerate-prepared DataLoader over ``sampler``."""

    def __init__(self, accelerator, loader, sampler: EpochSampler, start: int = 0):
        self.accelerator, self.loader, self.sampler = accelerator, loader, sampler
        self.epoch, self.skip = divmod(start, len(loader))
        self._batches = self._generate()

    def _generate(self):
        while True:
            loader = self.accelerator.skip_first_batches(self.loader, self.skip) if self.skip else self.loader
            self.skip = 0
            # Accelerate's loader re-sets its sampler's epoch from its own counter when iterated: set both
            loader.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch)
            yield from loader
            self.epoch += 1

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._batches)


@dataclasses.dataclass
class StepStats:
    """One optimizer step, on this process."""

    loss_sum: torch.Tensor  # the micro-batches' mean losses, summed (float64, on the device)
    micro_batches: int
    tokens: int
    lr: float  # the learning rate the step used
    grad_norm: torch.Tensor | None  # before clipping; None without clipping


def optimizer_step(task, model, micro_batches: Iterator[dict], *, accelerator, optimizer, scheduler,
                   grad_accum: int = 1, max_grad_norm: float | None = None) -> StepStats:
    """One optimizer step over ``grad_accum`` micro-batches: ``task.step`` runs the model and gives the loss;
    the gradient is the mean over the micro-batches, all-reduced only on the last one; then clipping, the
    optimizer and the schedule step."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    tokens = 0
    for i in range(grad_accum):
        batch = next(micro_batches)
        last = i == grad_accum - 1
        # no gradient all-reduce on the micro-batches before the last one
        with accelerator.no_sync(model) if not last else contextlib.nullcontext():
            loss = task.step(model, batch, loss=True, metrics=False).loss
            accelerator.backward(loss / grad_accum)
        loss_sum += loss.detach().double()
        tokens += task.num_target_tokens(batch)
    grad_norm = None
    if max_grad_norm is not None:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss_sum=loss_sum, micro_batches=grad_accum, tokens=tokens, lr=lr, grad_norm=grad_norm)


class StepLoop:
    """Optimizer steps from ``state.step`` up to ``train.max_steps``, and the periodic work between them: a
    ``train`` record every ``train.log_every`` steps and at the last one (the mean loss of the window, lr,
    tokens/s, grad norm), a validation pass every ``eval.every_steps``, a checkpoint every
    ``train.checkpoint_every`` (not at the last step: the final model is saved instead), then the callbacks.

    ``validate()`` returns the validation metrics (None: no periodic validation); ``checkpointer`` is a
    :class:`Checkpointer` (None: no checkpoints)."""

    def __init__(self, *, task, model, optimizer, scheduler, accelerator, state: TrainState, train: TrainConfig,
                 eval_every: int | None, metrics: MetricsLog, validate: Callable[[], dict] | None = None,
                 checkpointer: Checkpointer | None = None, progress: bool = False, t_start: float | None = None):
        self.task, self.model, self.optimizer, self.scheduler = task, model, optimizer, scheduler
        self.accelerator, self.state, self.tc, self.eval_every = accelerator, state, train, eval_every
        self.metrics, self.validate, self.checkpointer = metrics, validate, checkpointer
        self.progress = progress
        self.t_start = time.time() if t_start is None else t_start

    def run(self, stream: Iterator[dict], callbacks: Iterable[Callable[[int, dict], None]] = ()) -> None:
        from tqdm.auto import tqdm

        tc, state, acc = self.tc, self.state, self.accelerator
        callbacks = list(callbacks)
        bar = tqdm(total=tc.max_steps, initial=state.step, disable=not self.progress, desc="train",
                   dynamic_ncols=True, mininterval=0.5)
        self.model.train()
        t_window = time.time()
        try:
            while state.step < tc.max_steps:
                stats = optimizer_step(self.task, self.model, stream, accelerator=acc, optimizer=self.optimizer,
                                       scheduler=self.scheduler, grad_accum=tc.grad_accum,
                                       max_grad_norm=tc.max_grad_norm)
                state.step += 1
                bar.update(1)
                # losses and tokens of all processes
                summed = acc.reduce(torch.tensor([float(stats.loss_sum), float(stats.micro_batches),
                                                  float(stats.tokens)], dtype=torch.float64, device=acc.device),
                                    "sum")
                state.add(float(summed[0]), int(summed[1]), int(summed[2]))

                record: dict = {}
                if state.step % tc.log_every == 0 or state.step == tc.max_steps:
                    elapsed = time.time() - t_window
                    loss, window_tokens = state.close_window()
                    record = {"type": "train", "step": state.step, "loss": loss, "lr": stats.lr,
                              "tokens": state.tokens, "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                              "elapsed_s": time.time() - self.t_start}
                    if stats.grad_norm is not None:
                        record["grad_norm"] = float(stats.grad_norm)
                    derived = self.task.train_metrics(loss)  # e.g. bits per byte of a byte-level LM
                    record.update(derived)
                    self.metrics.write(record)
                    bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.4f}" for k, v in derived.items()},
                                    lr=f"{stats.lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
                    t_window = time.time()
                if (self.validate is not None and self.eval_every and state.step % self.eval_every == 0
                        and state.step < tc.max_steps):
                    valid = self.validate()
                    self.metrics.write({"type": "eval", "split": "valid", "step": state.step,
                                        "tokens": state.tokens, **valid})
                    if acc.is_main_process:
                        bar.write(f"step {state.step}: valid " + ", ".join(
                            f"{k} {v:.4f}" for k, v in valid.items() if isinstance(v, float) and "/" not in k))
                if (self.checkpointer is not None and tc.checkpoint_every and state.step % tc.checkpoint_every == 0
                        and state.step < tc.max_steps):
                    self.checkpointer.save(state)
                for fn in callbacks:
                    fn(state.step, record)
        finally:
            bar.close()


# --------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------


def evaluate_split(task, model, dataset, *, accelerator, batch_size: int, max_batches: int | None = None) -> dict:
    """The task's metrics of ``model`` (the wrapped one: under FSDP only it holds whole parameters) on
    ``dataset``, each example scored by one process, the sums added over processes."""
    from .eval.evaluate import evaluate

    loader = task.eval_loader(dataset, batch_size, accelerator.process_index, accelerator.num_processes)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    return evaluate(model, task, loader, device=accelerator.device, max_batches=max_batches, autocast_dtype=dtype,
                    reduce=lambda t: accelerator.reduce(t, "sum"))


def write_run_files(cfg: RunConfig, accelerator, resume_from: Path | None) -> None:
    """``run_config.yaml`` (the resolved config: every default filled in, no ``base``) and ``run_info.json``
    (versions, hardware, commit, command). Main process only; clears a previous run first under overwrite."""
    if not accelerator.is_main_process:
        return
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.overwrite and not resume_from:
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


def check_batch_fits(cfg: RunConfig, num_processes: int, n_train: int | None) -> None:
    per_step = cfg.train.batch_size * num_processes
    if n_train is not None and n_train < per_step:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} x {num_processes} process(es) needs at "
                          f"least {per_step} training examples, the task has {n_train}")


def find_resume_point(cfg: RunConfig, checkpointer: Checkpointer) -> Path | None:
    """The checkpoint to resume from (``train.resume``), checked against this run's number of processes."""
    if not cfg.train.resume:
        return None
    acc = checkpointer.accelerator
    latest = checkpointer.latest()
    if latest is None:
        if acc.is_main_process:
            print(f"seqzoo: train.resume=true but {cfg.output_dir} has no checkpoint; starting from step 0",
                  flush=True)
        return None
    saved = Checkpointer.num_processes(latest)
    if saved and saved != acc.num_processes:
        raise ConfigError(f"train.resume: {latest} was written by {saved} process(es), this run has "
                          f"{acc.num_processes}; resume with the same number of processes")
    return latest


def save_final_model(task, model, accelerator, out: Path) -> Path:
    """``out/final``: the head's save of the unwrapped model with the full state dict, the tokenizer and the
    task settings; written to a temporary folder and renamed."""
    accelerator.wait_for_everyone()
    final_dir = out / "final"
    full_state = accelerator.get_state_dict(model)  # collective under FSDP: gathers the full weights
    if accelerator.is_main_process:
        tmp = out / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        task.save_model(accelerator.unwrap_model(model), tmp, state_dict=full_state)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.rename(tmp, final_dir)
    accelerator.wait_for_everyone()
    return final_dir


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
    check_batch_fits(cfg, accelerator.num_processes, task.split_size("train"))
    checkpointer = Checkpointer(accelerator, out, tc.keep_checkpoints)
    resume_from = find_resume_point(cfg, checkpointer)

    # ---- run files, data ---------------------------------------------------------------------------------
    write_run_files(cfg, accelerator, resume_from)
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():  # the first process generates and caches, the others read
        train_ds, valid_ds, test_ds = task.dataset("train"), task.dataset("valid"), task.dataset("test")
    check_batch_fits(cfg, accelerator.num_processes, len(train_ds))
    sampler = EpochSampler(len(train_ds), tc.seed)
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=tc.batch_size, sampler=sampler, drop_last=True, collate_fn=task.collate,
        num_workers=tc.num_workers, generator=torch.Generator().manual_seed(tc.seed))

    # ---- model, optimizer, schedule, state ---------------------------------------------------------------
    from .optim import build_optimizer, build_scheduler

    set_seed(tc.seed)
    model = build_model(cfg, model_config, task)
    optimizer = build_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, tuple(tc.betas), tc.eps)
    scheduler = build_scheduler(optimizer, tc.lr_schedule, tc.max_steps, tc.warmup_steps, tc.min_lr_ratio)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    state = TrainState()
    # the scheduler is stepped once per optimizer step by the loop (not prepared: Accelerate would step it
    # once per process); it and the trainer state travel with the checkpoint
    accelerator.register_for_checkpointing(scheduler, state)
    metrics = MetricsLog(out / "metrics.jsonl", enabled=main_proc, tracker=accelerator.log)
    if resume_from is not None:
        checkpointer.load(resume_from)
        metrics.cut_back(state.step)
        if main_proc:
            print(f"seqzoo: resumed from {resume_from} (step {state.step})", flush=True)
    else:
        metrics.clear()
    if trackers:
        accelerator.init_trackers(tc.project, config=flat_hparams(cfg.to_dict()))

    # ---- train -------------------------------------------------------------------------------------------
    if main_proc:
        n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
        eff = tc.batch_size * tc.grad_accum * accelerator.num_processes
        print(f"seqzoo: {cfg.model['model_type']} ({n_params / 1e6:.2f}M params) on {task.name} | "
              f"{tc.max_steps} steps x {eff} examples | {accelerator.num_processes} process(es) on "
              f"{accelerator.device}, precision {accelerator.mixed_precision} | output {out}", flush=True)
    loop = StepLoop(
        task=task, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, state=state,
        train=tc, eval_every=ec.every_steps, metrics=metrics, checkpointer=checkpointer,
        validate=lambda: evaluate_split(task, model, valid_ds, accelerator=accelerator, batch_size=ec.batch_size,
                                        max_batches=ec.max_batches),
        progress=main_proc and tc.progress_bar, t_start=t_start)
    loop.run(TrainStream(accelerator, train_dl, sampler, start=state.step * tc.grad_accum), callbacks or [])
    train_time = time.time() - t_start

    # ---- final model, test metrics, plot, summary ---------------------------------------------------------
    final_dir = save_final_model(task, model, accelerator, out)
    test = evaluate_split(task, model, test_ds, accelerator=accelerator, batch_size=ec.batch_size)
    metrics.write({"type": "eval", "split": "test", "step": state.step, "tokens": state.tokens, **test})
    result = {"task": task.settings_dict(), "split": "test", "step": state.step, "metrics": test,
              "model": str(final_dir), "train_time_s": train_time, "num_processes": accelerator.num_processes}
    if main_proc:
        atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
        try:
            plot_curves(metrics.read(), out / "curves.png", f"{cfg.model['model_type']} on {task.name}",
                        primary=task.primary_metric)
        except Exception as e:  # a plot must never lose a finished run
            print(f"seqzoo: could not draw curves.png: {e}", file=sys.stderr)
    if trackers:
        accelerator.end_training()

    failed = [k for k, v in ec.require.items() if not (isinstance(test.get(k), float) and task.better(k, test[k], v))]
    result["require_failed"] = failed
    if main_proc:
        print_summary(task, test, ec.require, state.step, train_time, final_dir)
    return result


def print_summary(task, test: dict, require: dict, steps: int, train_time: float, final_dir: Path) -> None:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float) and "/" not in k)
    print(f"seqzoo: {task.name} test {shown} ({test.get('num_targets', 0)} targets) | {steps} steps "
          f"in {train_time:.0f}s | model {final_dir}", flush=True)
    for k, v in require.items():
        got = test.get(k)
        ok = isinstance(got, float) and task.better(k, got, v)
        print(f"seqzoo: required {k} {'<=' if k in task.minimize else '>='} {v}: {'PASS' if ok else 'FAIL'} (got "
              f"{got if not isinstance(got, float) else round(got, 4)})", flush=True)


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
