"""The trainer's units, each alone: the log window of TrainState, the metrics log, the checkpointer, the
training stream (resume = tail of the uninterrupted stream), one optimizer step (gradient accumulation = one
big batch) and the step loop's schedule of logs, validations, checkpoints and callbacks."""

import math
import json

import pytest
import torch
import transformers

import seqzoo
from seqzoo.config import TrainConfig
from seqzoo.eval import get_task
from seqzoo.trainer import (
    Checkpointer,
    EpochSampler,
    MetricsLog,
    StepLoop,
    TrainState,
    TrainStream,
    optimizer_step,
    read_metrics,
)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture
def task(tmp_path):
    return get_task("mqar", {"vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_train": 40, "num_valid": 8,
                             "num_test": 8}, cache_dir=tmp_path / "cache")


def tiny_lm():
    config = seqzoo.make_config("transformer", hidden_size=32, num_hidden_layers=1, num_heads=2, vocab_size=64,
                                max_position_embeddings=16, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


# ---- TrainState --------------------------------------------------------------------------------------------


def test_train_state_log_window():
    s = TrainState()
    s.add(3.0, 2, 100)
    s.add(1.0, 2, 50)
    assert s.close_window() == (1.0, 150)  # (3 + 1) / 4 micro-batches
    assert (s.window_loss_sum, s.window_loss_count, s.window_tokens, s.tokens) == (0.0, 0, 0, 150)
    s.add(2.0, 1, 10)
    assert s.close_window() == (2.0, 10) and s.tokens == 160
    restored = TrainState()
    restored.load_state_dict(s.state_dict())
    assert restored == s


# ---- MetricsLog --------------------------------------------------------------------------------------------


def test_metrics_log_writes_reads_cuts_back_and_feeds_trackers(tmp_path):
    sent = []
    log = MetricsLog(tmp_path / "metrics.jsonl", tracker=lambda values, step: sent.append((step, values)))
    log.write({"type": "train", "step": 5, "loss": 2.0, "lr": 0.1})
    log.write({"type": "eval", "split": "valid", "step": 5, "loss": 1.5, "accuracy": 0.25})
    log.write({"type": "train", "step": 10, "loss": 1.0, "lr": 0.1})
    log.write({"type": "eval", "split": "test", "step": 10, "loss": 1.1, "accuracy": 0.5})
    assert [r["step"] for r in log.read()] == [5, 5, 10, 10]
    assert sent[0] == (5, {"train/loss": 2.0, "train/lr": 0.1})
    assert sent[1] == (5, {"valid/loss": 1.5, "valid/accuracy": 0.25})
    assert sent[3] == (10, {"test/loss": 1.1, "test/accuracy": 0.5})
    # a line cut by a kill is dropped when read
    with open(log.path, "a") as f:
        f.write('{"type": "train", "st')
    assert len(log.read()) == 4 and len(read_metrics(log.path)) == 4
    # resuming at step 7 keeps what came before it; a final test record never survives a cut
    log.cut_back(7)
    assert [(r["type"], r["step"]) for r in log.read()] == [("train", 5), ("eval", 5)]
    log.cut_back(100)
    assert len(log.read()) == 2
    log.clear()
    assert not log.path.exists()


def test_metrics_log_of_another_process_writes_no_file(tmp_path):
    sent = []
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False, tracker=lambda values, step: sent.append(step))
    log.write({"type": "train", "step": 1, "loss": 1.0})
    log.cut_back(0)
    assert not log.path.exists() and sent == [1]  # Accelerate's tracker itself logs on the main process only


# ---- Checkpointer ------------------------------------------------------------------------------------------


def test_checkpointer_keeps_the_newest_and_restores_everything(tmp_path, accelerator):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ckpt = Checkpointer(accelerator, tmp_path, keep=2)
    assert ckpt.latest() is None
    saved_weights = {}
    for step in (2, 4, 6):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        state.step, state.tokens, state.window_loss_sum = step, 10 * step, 0.5 * step
        saved_weights[step] = model.weight.detach().clone()
        ckpt.save(state)
    (tmp_path / "checkpoints" / ".tmp-step_00000008").mkdir()  # a save killed half-way: never listed
    assert [p.name for p in ckpt.list()] == ["step_00000004", "step_00000006"]
    assert ckpt.latest().name == "step_00000006" and Checkpointer.num_processes(ckpt.latest()) == 1
    assert json.loads((ckpt.latest() / "trainer_state.json").read_text())["tokens"] == 60

    with torch.no_grad():
        model.weight.zero_()
    state.step, state.tokens = 99, 0
    ckpt.load(tmp_path / "checkpoints" / "step_00000004")
    assert torch.equal(model.weight, saved_weights[4])
    assert (state.step, state.tokens, state.window_loss_sum) == (4, 40, 2.0)
    assert opt.state_dict()["state"][0]["step"] == 2  # the optimizer's own state came back too

    state.step = 6
    ckpt.save(state)  # the same step again (a resumed run reaching it) replaces the old folder
    assert [p.name for p in ckpt.list()] == ["step_00000004", "step_00000006"]


# ---- TrainStream -------------------------------------------------------------------------------------------


def test_train_stream_from_any_position_is_the_tail_of_the_stream_from_zero(accelerator, task):
    ds = task.dataset("train")  # 40 examples, batches of 8: 5 per epoch

    def stream(start):
        sampler = EpochSampler(len(ds), seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, drop_last=True,
                                             collate_fn=task.collate)
        return TrainStream(accelerator, accelerator.prepare(loader), sampler, start=start)

    def take(s, n):
        return [next(s)["input_ids"] for _ in range(n)]

    full = take(stream(0), 13)  # into the third epoch
    for start in (3, 5, 7):
        tail = take(stream(start), 13 - start)
        assert all(torch.equal(a, b) for a, b in zip(tail, full[start:]))
    # epochs differ in order but each covers every example once
    first = torch.cat(full[:5])
    second = torch.cat(full[5:10])
    assert not torch.equal(first, second)
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, second.tolist()))


# ---- optimizer_step ----------------------------------------------------------------------------------------


def test_accumulated_micro_batches_equal_one_large_batch(accelerator, task):
    ds = task.dataset("train")
    batch = task.collate([ds[i] for i in range(8)])
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]

    def one_step(batches, grad_accum):
        model = tiny_lm()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
        model, opt = accelerator.prepare(model, opt)
        stats = optimizer_step(task, model, iter(batches), accelerator=accelerator, optimizer=opt, scheduler=sched,
                               grad_accum=grad_accum, max_grad_norm=100.0)
        return model, stats

    big, big_stats = one_step([batch], 1)
    acc, acc_stats = one_step(halves, 2)
    # every MQAR example has the same number of targets: the mean of the halves' mean losses is the big mean
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert big_stats.micro_batches == 1 and acc_stats.micro_batches == 2
    assert big_stats.tokens == acc_stats.tokens == 8 * 16
    torch.testing.assert_close(acc_stats.loss_sum / 2, big_stats.loss_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc_stats.grad_norm, big_stats.grad_norm, rtol=1e-4, atol=1e-6)
    assert big_stats.lr == pytest.approx(0.25)  # the lr the step used (0.5 x the schedule's 0.5)
    # the untouched model differs: the step did move the weights
    assert not torch.equal(next(tiny_lm().parameters()), next(big.parameters()))


# ---- StepLoop ----------------------------------------------------------------------------------------------


def test_step_loop_schedules_logs_validations_checkpoints_and_callbacks(tmp_path, accelerator, task):
    model = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    model, opt = accelerator.prepare(model, opt)
    state = TrainState()
    accelerator.register_for_checkpointing(sched, state)
    ds = task.dataset("train")
    batches = iter([task.collate([ds[i] for i in range(4 * j, 4 * j + 4)]) for j in range(10)] * 4)
    validations, called = [], []
    tc = TrainConfig(max_steps=7, log_every=3, checkpoint_every=3, keep_checkpoints=5, grad_accum=1)
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    loop = StepLoop(task=task, model=model, optimizer=opt, scheduler=sched, accelerator=accelerator, state=state,
                    train=tc, eval_every=2, metrics=metrics, checkpointer=Checkpointer(accelerator, tmp_path, 5),
                    validate=lambda: validations.append(state.step) or {"loss": 1.0, "accuracy": 0.5})
    loop.run(batches, [lambda step, record: called.append((step, record.get("step")))])
    recs = metrics.read()
    assert state.step == 7
    assert [r["step"] for r in recs if r["type"] == "train"] == [3, 6, 7]  # every 3 steps and the last
    assert [r["step"] for r in recs if r["type"] == "eval"] == validations == [2, 4, 6]  # never at the last step
    assert [p.name for p in Checkpointer(accelerator, tmp_path, 5).list()] == ["step_00000003", "step_00000006"]
    assert called == [(1, None), (2, None), (3, 3), (4, None), (5, None), (6, 6), (7, 7)]
    train_recs = [r for r in recs if r["type"] == "train"]
    assert all(r["tokens_per_s"] > 0 and "grad_norm" in r for r in train_recs)
    assert train_recs[-1]["tokens"] == state.tokens == 7 * 4 * 16
    # a window's loss is the mean over its steps: 3, 3 and 1 step(s)
    assert state.window_loss_count == 0

    # from a later state (as after a resume) the loop runs only the remaining steps
    tc.max_steps = 9
    called.clear()
    loop.run(batches, [lambda step, record: called.append(step)])
    assert called == [8, 9] and state.step == 9


def test_required_metrics_follow_their_direction():
    from seqzoo.eval import get_task

    mqar = get_task("mqar", {"vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2})
    assert mqar.better("accuracy", 0.99, 0.98) and not mqar.better("accuracy", 0.97, 0.98)
    assert mqar.train_metrics(1.0) == {}
    lm = get_task("bytes_lm", {"path": "unused"})
    assert lm.better("bpb", 1.9, 2.0) and not lm.better("bpb", 2.1, 2.0)  # bits per byte: lower is better
    assert lm.train_metrics(math.log(2) * 1.5) == {"bpb": pytest.approx(1.5)}


def test_curves_against_tokens_with_the_primary_metric(tmp_path):
    from seqzoo.trainer import plot_curves

    records = [{"type": "train", "step": s, "tokens": 100 * s, "loss": 2.0 / s, "bpb": 2.9 / s} for s in (1, 2, 3)]
    records += [{"type": "eval", "split": "valid", "step": 2, "tokens": 200, "loss": 1.2, "bpb": 1.7,
                 "bpb_ci95": 0.1, "num_segments": 4.0}]
    plot_curves(records, tmp_path / "c.png", "t", primary="bpb")
    assert (tmp_path / "c.png").stat().st_size > 1000 and not list(tmp_path.glob(".*"))


def test_mamba_parameters_get_no_weight_decay_even_after_loading(tmp_path):
    from transformers import AutoModelForCausalLM

    from seqzoo.optim import param_groups

    for model_type, names in (("zoo_mamba", ("A_log", "D")), ("zoo_mamba2", ("A_log", "dt_bias", "D"))):
        model = AutoModelForCausalLM.from_config(seqzoo.make_config(model_type, hidden_size=32, num_hidden_layers=1,
                                                                    num_heads=2))
        model.save_pretrained(tmp_path / model_type)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / model_type)
        for m in (model, loaded):
            decayed = {id(p) for p in param_groups(m, 0.1)[0]["params"]}
            mixer = m.model.layers[0].mixer
            for name in names:
                assert id(getattr(mixer, name)) not in decayed, (model_type, name)
            assert id(mixer.in_proj.weight) in decayed
