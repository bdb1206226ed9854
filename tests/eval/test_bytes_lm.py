"""Byte-level LM (enwik8 / bytes_lm): corpora on disk, the split arithmetic, training windows, bits per byte,
in-order evaluation (carried state, sliding windows) and the baselines. Every corpus is written by the test."""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.common import ConfigError
from seqzoo.eval import get_task
from seqzoo.eval.evaluate import evaluate
from seqzoo.eval.lm import (
    CarryBatches,
    TrainWindows,
    WindowBatches,
    bpb_sums,
    carries_state,
    corpus,
    finalize_bpb,
    fraction_split,
    lzma_bpb,
    ngram_bpb,
    open_byte_corpus,
    open_enwik8,
    score_bytes,
)
from seqzoo.eval.lm.windows import IGNORE_INDEX

SENTENCES = [b"The quick brown fox jumps over the lazy dog. ", b"Byte models read raw text,\r\nnot words. ",
             "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9. ".encode(), b"<page><title>Anarchism</title></page>\n"]


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "default_cache"))


def text_bytes(n: int, seed: int = 0) -> bytes:
    """English-like bytes (repeated sentences in a seeded order, with some noise) -- structure a model and a
    compressor can find, plus CRLF and multi-byte UTF-8 that a text reader would alter."""
    rng = np.random.default_rng(seed)
    out = bytearray()
    while len(out) < n:
        out += SENTENCES[rng.integers(len(SENTENCES))]
        if rng.random() < 0.2:
            out += bytes(rng.integers(0, 256, size=3, dtype=np.uint8))
    return bytes(out[:n])


def tiny_lm(model_type: str, **fields):
    # the default vocabulary: 256 bytes + the ByteTokenizer's <pad> <bos> <eos>
    cfg = seqzoo.make_config(model_type, hidden_size=32, num_hidden_layers=2, num_heads=2, **fields)
    return AutoModelForCausalLM.from_config(cfg).eval()


def token_nll(model, inputs: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """Per-position NLL (nats, float64) of one unbatched forward of ``inputs`` against ``targets``."""
    with torch.no_grad():
        logits = model(torch.tensor(inputs, dtype=torch.long)[None], use_cache=False).logits[0]
    return F.cross_entropy(logits.double(), torch.tensor(targets, dtype=torch.long), reduction="none")


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# ---- corpora and splits ------------------------------------------------------------------------------------


def test_fraction_split_arithmetic():
    assert fraction_split(1000, 0.05, 0.05) == {"train": (0, 900), "valid": (900, 950), "test": (950, 1000)}
    # round, not int: 100 * 0.29 == 28.999999999999996
    assert fraction_split(100, 0.29, 0.07) == {"train": (0, 64), "valid": (64, 93), "test": (93, 100)}
    b = fraction_split(12_345, 0.1, 0.2)
    assert b["train"][1] - b["train"][0] == 12_345 - 1234 - 2469 and b["test"][1] == 12_345
    with pytest.raises(ConfigError, match="task.valid_fraction"):
        fraction_split(100, 0.0, 0.1)
    with pytest.raises(ConfigError, match="test_fraction"):
        fraction_split(100, 0.5, 0.5)


def test_folder_corpus_is_the_raw_bytes_in_sorted_order(tmp_path):
    root = tmp_path / "texts"
    (root / "b").mkdir(parents=True)
    (root / ".git").mkdir()
    parts = {"b/two.txt": b"second\r\n", "a.txt": "caf\u00e9\n".encode(), "c.md": b"\xff\xfe third"}
    for name, data in parts.items():
        (root / name).write_bytes(data)
    (root / ".hidden.txt").write_bytes(b"never read")
    (root / ".git" / "HEAD").write_bytes(b"never read")
    cache = tmp_path / "cache"
    c = open_byte_corpus(root, cache, separator="|", valid_fraction=0.2, test_fraction=0.2)
    want = b"".join(parts[k] + b"|" for k in sorted(parts))  # a.txt, b/two.txt, c.md
    assert bytes(c.data) == want
    n = len(want)
    assert c.bounds["test"] == (n - round(n * 0.2), n)
    # written once, atomically: one cache file, no temporary left; a second open maps the same file
    assert files_under(cache) == [os.path.basename(c.data.filename)]
    mtime = os.stat(c.data.filename).st_mtime_ns
    c2 = open_byte_corpus(root, cache, separator="|", valid_fraction=0.2, test_fraction=0.2)
    assert c2.data.filename == c.data.filename and os.stat(c.data.filename).st_mtime_ns == mtime
    # an edited corpus is read again
    (root / "a.txt").write_bytes(b"changed\n")
    c3 = open_byte_corpus(root, cache, separator="|", valid_fraction=0.2, test_fraction=0.2)
    assert bytes(c3.data).startswith(b"changed\n|second")
    # only *.txt
    c4 = open_byte_corpus(root, cache, pattern="**/*.txt", separator="", valid_fraction=0.2, test_fraction=0.2)
    assert bytes(c4.data) == b"changed\nsecond\r\n"
    # a single file is mapped in place: nothing is copied
    f = tmp_path / "one.txt"
    f.write_bytes(text_bytes(500))
    c5 = open_byte_corpus(f, tmp_path / "cache2")
    assert os.path.samefile(c5.data.filename, f) and not (tmp_path / "cache2").exists()
    assert bytes(c5.split_bytes("valid")) == text_bytes(500)[450:475]


@pytest.fixture
def small_enwik8(monkeypatch):
    """Shrink enwik8's size and split (1000 bytes: 900 / 50 / 50) so the test can write the file."""
    monkeypatch.setattr(corpus, "ENWIK8_SIZE", 1000)
    monkeypatch.setattr(corpus, "ENWIK8_SPLIT", (900, 50, 50))
    return text_bytes(1000, seed=3)


def test_enwik8_raw_file_and_zip_give_the_same_split(tmp_path, small_enwik8):
    raw = tmp_path / "enwik8"
    raw.write_bytes(small_enwik8)
    z = tmp_path / "zipped" / "enwik8.zip"
    z.parent.mkdir()
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", small_enwik8)
    a = open_enwik8(raw, tmp_path / "cache")
    assert os.path.samefile(a.data.filename, raw) and not (tmp_path / "cache").exists()
    b = open_enwik8(z.parent, tmp_path / "cache")  # a folder holding enwik8.zip
    assert bytes(a.data) == bytes(b.data) == small_enwik8
    assert a.bounds == b.bounds == {"train": (0, 900), "valid": (900, 950), "test": (950, 1000)}
    assert bytes(b.split_bytes("test")) == small_enwik8[950:]
    assert len(files_under(tmp_path / "cache")) == 1  # the extracted bytes, nothing temporary


def test_missing_or_corrupt_data_is_a_clear_error_and_writes_nothing(tmp_path, small_enwik8):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"task.path: .*nowhere.* does not exist"):
        open_enwik8(tmp_path / "nowhere", cache)
    with pytest.raises(ConfigError, match="holds neither 'enwik8' nor 'enwik8.zip'"):
        open_enwik8(tmp_path, cache)
    short = tmp_path / "short" / "enwik8"
    short.parent.mkdir()
    short.write_bytes(small_enwik8[:999])
    with pytest.raises(ConfigError, match="has 999 bytes; expected enwik8's 1000"):
        open_enwik8(short, cache)
    # a zip whose compressed data is damaged: detected while extracting (CRC-32 or inflate error)
    z = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", small_enwik8)
    blob = bytearray(z.read_bytes())
    start = 30 + len("enwik8")  # local header + name: the deflate stream starts here
    for i in range(start + 40, start + 60):
        blob[i] ^= 0xFF
    z.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match=r"enwik8.zip' is corrupt"):
        open_enwik8(z, cache)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(ConfigError, match="expected a member named 'enwik8'"):
        open_enwik8(other, cache)
    truncated = tmp_path / "trunc.zip"
    truncated.write_bytes(z.read_bytes()[:200])
    with pytest.raises(ConfigError, match="trunc.zip"):
        open_enwik8(truncated, cache)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no files matching"):
        open_byte_corpus(empty, cache)
    with pytest.raises(ConfigError, match="task.path: .*absent.txt.* does not exist"):
        open_byte_corpus(tmp_path / "absent.txt", cache)
    assert not cache.exists() or files_under(cache) == []


# ---- training windows ------------------------------------------------------------------------------------


def test_train_windows_are_seeded_stratified_and_exact(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(text_bytes(5000))
    c = open_byte_corpus(f, tmp_path / "cache", valid_fraction=0.1, test_fraction=0.1)
    lo, hi = c.bounds["train"]
    L = 37
    ds = TrainWindows(c.data, lo, hi, seq_len=L, seed=7)
    assert len(ds) == (hi - lo - 1) // L
    raw = text_bytes(5000)
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        s = int(ds.starts[i])
        assert lo + i * L <= s < lo + (i + 1) * L and s + L + 1 <= hi  # in its stratum, inside the split
        ex = ds[i]
        assert ex["input_ids"].dtype == torch.int64 and ex["input_ids"].shape == (L,)
        assert bytes(ex["input_ids"].tolist()) == raw[s: s + L]
        assert bytes(ex["targets"].tolist()) == raw[s + 1: s + L + 1]  # the next byte of each input
    # a pure function of (seed, index): a new instance (a resumed run) gives the same windows
    again = TrainWindows(c.data, lo, hi, seq_len=L, seed=7)
    assert np.array_equal(again.starts, ds.starts)
    assert not np.array_equal(TrainWindows(c.data, lo, hi, seq_len=L, seed=8).starts, ds.starts)
    # offsets are spread over the stratum, not constant
    assert len(set((ds.starts - lo) % L)) > L // 3
    # pickling (DataLoader workers under spawn) reopens the memmap by name instead of copying the corpus
    blob = pickle.dumps(ds)
    assert len(blob) < 4000 + 8 * len(ds)
    assert torch.equal(pickle.loads(blob)[3]["targets"], ds[3]["targets"])
    with pytest.raises(ValueError, match="seq_len"):
        TrainWindows(c.data, lo, lo + 10, seq_len=10, seed=0)


# ---- bits per byte -------------------------------------------------------------------------------------------


def test_bpb_against_a_hand_computation():
    # vocabulary 4; logits [0, 0, 0, 0] give p = 1/4 (2 bits), [ln 3, 0, 0, 0] give p(0) = 3/6 (1 bit),
    # p(1) = 1/6 (log2 6 bits)
    u, s = [0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]
    logits = torch.tensor([[u, s, s], [s, u, s]])  # [2, 3, 4]
    targets = torch.tensor([[2, 0, 1], [IGNORE_INDEX, 3, IGNORE_INDEX]])
    total = bpb_sums(logits, targets)
    row0, row1 = [2.0, 1.0, math.log2(6.0)], [2.0]
    bits = sum(row0) + sum(row1)
    assert float(total["bpb"][0]) == pytest.approx(bits) and float(total["bpb"][1]) == 4
    assert float(total["loss"][0]) == pytest.approx(bits * math.log(2.0))
    out = finalize_bpb(total)
    assert out["bpb"] == pytest.approx(bits / 4) and out["num_targets"] == 4 and out["num_segments"] == 2
    segs = [sum(row0) / 3, sum(row1) / 1]
    sd = math.sqrt(((segs[0] - segs[1]) ** 2) / 2)  # unbiased sd of two values
    assert out["bpb_ci95"] == pytest.approx(1.96 * sd / math.sqrt(2))
    # a row with nothing scored is no segment
    more = bpb_sums(torch.zeros(1, 2, 4), torch.full((1, 2), IGNORE_INDEX))
    assert float(more["segment_bpb"][1]) == 0 and float(more["bpb"][1]) == 0


def test_lzma_and_ngram_baselines():
    rng = np.random.default_rng(0)
    assert lzma_bpb(bytes(rng.integers(0, 256, 20_000, dtype=np.uint8))) > 7.9  # noise does not compress
    assert lzma_bpb(b"abcd" * 5000) < 0.1
    # order 1, hand counts: train "abab" has contexts a->b (2 times), b->a (1 time)
    data = np.frombuffer(b"abab" + b"ab", dtype=np.uint8)
    got = ngram_bpb(data, train=(0, 4), split=(4, 6), order=1)
    p_a_after_b = (1 + 1) / (1 + 256)  # byte 4 'a' after 'b' (byte 3, from the train split)
    p_b_after_a = (2 + 1) / (2 + 256)
    assert got == pytest.approx(-(math.log2(p_a_after_b) + math.log2(p_b_after_a)) / 2)
    assert ngram_bpb(data, (0, 4), (4, 6), order=0) == pytest.approx(-math.log2((2 + 1) / (4 + 256)))


# ---- in-order evaluation ---------------------------------------------------------------------------------------


def stream_bounds(first: int, hi: int, streams: int) -> list[int]:
    n = hi - first
    return [first + b * n // streams for b in range(streams + 1)]


@pytest.mark.parametrize("model_type", sorted(seqzoo.list_architectures()))
def test_in_order_evaluation_equals_one_long_forward(model_type):
    """Every architecture: a recurrent one read in segments with its cache carried, an attention one in
    sliding windows whose context reaches the start of the file, scores exactly what one forward pass over the
    whole text scores."""
    model = tiny_lm(model_type)
    data = np.frombuffer(text_bytes(300, seed=1), dtype=np.uint8)
    want = token_nll(model, data[:-1], data[1:])
    if carries_state(model.config):
        got = score_bytes(model, data, 0, 300, mode="carry", segment=37, context=50, batch_size=1)
        assert got["num_segments"] == math.ceil(299 / 37)
    else:
        got = score_bytes(model, data, 0, 300, mode="window", stride=37, context=300, batch_size=3)
    assert got["num_targets"] == 299  # byte 0 has nothing before it
    assert got["loss"] == pytest.approx(float(want.mean()), rel=1e-6)


def test_carried_streams_start_from_their_warm_up():
    # a split in the middle, 3 streams in one batch: each stream equals one forward of its warm-up + bytes
    model = tiny_lm("deltanet")
    data = np.frombuffer(text_bytes(400, seed=1), dtype=np.uint8)
    lo, hi, C = 150, 400, 20
    got = score_bytes(model, data, lo, hi, mode="carry", segment=16, context=C, batch_size=3)
    nats = 0.0
    bounds = stream_bounds(lo, hi, 3)
    for p, e in zip(bounds[:-1], bounds[1:]):
        nll = token_nll(model, data[p - C: e - 1], data[p - C + 1: e])
        nats += float(nll[C - 1:].sum())  # the first C - 1 targets are warm-up
    assert got["num_targets"] == hi - lo
    assert got["loss"] * (hi - lo) == pytest.approx(nats, rel=1e-6)


def test_sliding_windows_give_every_byte_its_context():
    model = tiny_lm("transformer")
    assert not carries_state(model.config)
    data = np.frombuffer(text_bytes(300, seed=2), dtype=np.uint8)
    lo, hi, R, C = 101, 300, 16, 24
    got = score_bytes(model, data, lo, hi, mode="window", stride=R, context=C, batch_size=3)
    # the oracle: byte t, in window k = (t - lo) // R, is predicted from bytes [s_k - C, t)
    nats = 0.0
    for t in range(lo, hi):
        s = lo + (t - lo) // R * R
        a = s - C
        assert t - a >= C
        nats += float(token_nll(model, data[a:t], data[a + 1: t + 1])[-1])
    assert got["num_targets"] == hi - lo
    assert got["loss"] * (hi - lo) == pytest.approx(nats, rel=1e-6)
    # a context that reaches the start of the file: the same as one long forward (attention is causal)
    full = score_bytes(model, data, 0, 300, mode="window", stride=50, context=300, batch_size=4)
    assert full["loss"] == pytest.approx(float(token_nll(model, data[:-1], data[1:]).mean()), rel=1e-6)
    short = score_bytes(model, data, 0, 300, mode="window", stride=50, context=2, batch_size=4)
    assert short["loss"] != pytest.approx(full["loss"], rel=1e-6)  # the context matters (untrained: a little)


@pytest.mark.parametrize("kind", ["carry", "window"])
@pytest.mark.parametrize("world", [1, 3])
def test_every_byte_is_scored_once_over_processes(kind, world):
    # byte i of this corpus is i: a target's value is its position in the corpus
    data = np.arange(256, dtype=np.uint8)
    lo, hi = 20, 250

    def batches(rank):
        if kind == "carry":
            return CarryBatches(data, lo, hi, segment=29, context=13, streams_per_rank=2, rank=rank, world=world)
        return WindowBatches(data, lo, hi, stride=29, context=13, batch_size=2, rank=rank, world=world)

    per_rank = [batches(r) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # lockstep: the same number of batches on every process
    scored, min_context = [], hi
    for b in per_rank:
        assert len(list(b)) == len(b)
        for batch in b:
            assert batch["carry_state"] is (kind == "carry")
            ids, tgt = batch["input_ids"], batch["targets"]
            real = tgt != IGNORE_INDEX
            assert torch.equal(ids[real] + 1, tgt[real])  # each target is the byte after its input
            scored += tgt[real].tolist()
            if kind == "window":  # every scored byte sees >= context bytes: its row starts early enough
                for row_ids, row_real in zip(ids, real):
                    if row_real.any():
                        first_scored = int(row_ids[row_real][0]) + 1
                        min_context = min(min_context, first_scored - int(row_ids[0]))
    assert sorted(scored) == list(range(lo, hi))  # every byte once, none twice
    if kind == "window":
        assert min_context == 13


# ---- the tasks, through the trainer and the eval CLI ----------------------------------------------------------


def test_every_architecture_has_an_enwik8_config():
    from seqzoo.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "enwik8"
    for arch in seqzoo.list_architectures():
        path = root / f"{arch}.yaml"
        assert path.is_file(), f"configs/enwik8/{arch}.yaml is missing (every architecture has one)"
        cfg = load_config(path)
        assert cfg.model["model_type"] == arch and cfg.task["name"] == "enwik8"
    small = load_config(root / "cpu_small.yaml", ["task.path=/somewhere"])
    assert small.task["name"] == "bytes_lm" and small.task["path"] == "/somewhere"


def test_task_settings_and_the_evaluation_mode(tmp_path):
    with pytest.raises(ConfigError, match="task.path: expected the path of the corpus"):
        get_task("bytes_lm", {})
    with pytest.raises(ConfigError, match="task.eval_stride: 600 is longer than task.seq_len"):
        get_task("enwik8", {"eval_stride": 600})
    with pytest.raises(ConfigError, match="task.test_fraction"):
        get_task("bytes_lm", {"path": "x", "valid_fraction": 0.6, "test_fraction": 0.5})
    task = get_task("bytes_lm", {"path": str(tmp_path / "not-read-yet"), "seq_len": 64})  # data is read lazily
    assert task.eval_mode == "window"  # auto, undecided: windows are exact for any causal model
    task.check_model_config(tiny_lm("deltanet").config)
    assert task.eval_mode == "carry"
    task.check_model_config(tiny_lm("transformer").config)
    assert task.eval_mode == "window" and task.context(False) == 64 + 1 - 16 and task.max_length == 64
    forced = get_task("bytes_lm", {"path": "x", "eval_mode": "carry"})
    with pytest.raises(ConfigError, match="task.eval_mode: 'carry' needs a model whose every layer"):
        forced.check_model_config(tiny_lm("transformer").config)
    with pytest.raises(ConfigError, match="model.bidirectional: a language model must be causal"):
        task.check_model_config(seqzoo.make_config("deltanet", bidirectional=True))
    with pytest.raises(ConfigError, match="model.causal: a language model must be causal"):
        task.check_model_config(seqzoo.make_config("transnormer", causal=False))
    defaults = task.model_config_defaults()
    assert defaults["vocab_size"] == 259 and defaults["pad_token_id"] == 256


def byte_run_config(out, cache, corpus_path, model_type="deltanet", **sections) -> dict:
    cfg = {
        "output_dir": str(out),
        "model": {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2},
        "task": {"name": "bytes_lm", "path": str(corpus_path), "seq_len": 32, "valid_fraction": 0.1,
                 "test_fraction": 0.1, "eval_segment": 24, "eval_stride": 16},
        "train": {"max_steps": 9, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "log_every": 1,
                  "report_to": ["none"], "progress_bar": False, "data_cache_dir": str(cache),
                  "lr_schedule": "linear"},
        "eval": {"every_steps": 4, "batch_size": 3},
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


class Killed(Exception):
    pass


def test_bytes_lm_trains_resumes_mid_epoch_and_scores_every_test_byte(tmp_path):
    """A folder of text files through the trainer: resumed after a stop mid-epoch it logs exactly the losses
    of an uninterrupted run; its test pass scores every test byte once, as score_bytes does."""
    from seqzoo.config import resolve
    from seqzoo.trainer import train

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"doc{i}.txt").write_bytes(text_bytes(400, seed=10 + i))
    cache = tmp_path / "cache"
    # 1203 bytes: 963 train -> (963 - 1) // 32 = 30 windows = 7 steps of 4 per epoch: step 5 is mid-epoch
    sections = dict(train={"checkpoint_every": 5, "keep_checkpoints": 2})
    straight = tmp_path / "straight"
    train(resolve(byte_run_config(straight, cache, texts, **sections)))

    resumed = tmp_path / "resumed"

    def stop_at_6(step, record):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(resolve(byte_run_config(resumed, cache, texts, **sections)), callbacks=[stop_at_6])
    raw = byte_run_config(resumed, cache, texts, **sections)
    raw["train"]["resume"] = True
    train(resolve(raw))

    def records(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rs]

    assert strip(records(resumed)) == strip(records(straight))
    test = json.loads((straight / "eval.json").read_text())["metrics"]
    assert test["num_targets"] == round(1203 * 0.1) and test["bpb"] == pytest.approx(test["loss"] / math.log(2))
    assert 0 < test["bpb_ci95"] < 1 and [r["split"] for r in records(straight) if r["type"] == "eval"] == \
        ["valid", "valid", "test"]
    # the progress bar's and metrics.jsonl's training bpb is the window's mean loss in bits; evaluations carry
    # the token count, so curves.png is drawn against training tokens
    trained = [r for r in records(straight) if r["type"] == "train"]
    assert trained and all(r["bpb"] == pytest.approx(r["loss"] / math.log(2)) for r in trained)
    assert all(r["tokens"] > 0 for r in records(straight))
    assert (straight / "curves.png").stat().st_size > 1000
    # the task's evaluation (Task.step through the byte-lm head, the carry handed on by evaluate) equals
    # score_bytes with the same streams
    model = AutoModelForCausalLM.from_pretrained(straight / "final")
    task = get_task("bytes_lm", {k: v for k, v in raw["task"].items() if k != "name"}, cache_dir=cache)
    task.check_model_config(model.config)
    assert task.eval_mode == "carry"
    got = evaluate(model, task, task.eval_loader(task.dataset("test"), 3))
    c = task.corpus
    lo, hi = c.split_range("test")
    want = score_bytes(model, c.data, lo, hi, mode="carry", segment=24, context=32, batch_size=3)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-9) and got["num_targets"] == want["num_targets"]
    assert got["loss"] == pytest.approx(test["loss"], rel=1e-6)


def test_enwik8_through_the_trainer_and_the_eval_cli(tmp_path, small_enwik8, capsys):
    from seqzoo.config import resolve
    from seqzoo.eval.__main__ import main as eval_main
    from seqzoo.trainer import train

    z = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", small_enwik8)
    raw = byte_run_config(tmp_path / "run", tmp_path / "cache", z, model_type="transformer",
                          train={"max_steps": 3})
    raw["task"] = {"name": "enwik8", "path": str(z), "seq_len": 32, "eval_stride": 16}
    result = train(resolve(raw))
    assert result["metrics"]["num_targets"] == 50  # the whole (shrunk) test split
    capsys.readouterr()
    assert eval_main(["--model", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--batch-size",
                      "2", "--output", "-"]) == 0
    printed = capsys.readouterr()
    out = json.loads(printed.out)
    assert out["task"]["name"] == "enwik8" and out["metrics"]["num_targets"] == 50
    bpb, ci = out["metrics"]["bpb"], out["metrics"]["bpb_ci95"]
    assert f"seqzoo-eval: enwik8 test: bpb {bpb:.4f} ± {ci:.4f} (95% CI over segments)" in printed.err
    assert out["metrics"]["bpb"] == pytest.approx(result["metrics"]["bpb"], rel=1e-6)  # windows: batching-free
    assert out["metrics"]["bpb_ci95"] > 0


def test_missing_or_corrupt_corpus_stops_the_trainer_before_it_writes(tmp_path, small_enwik8):
    from seqzoo.config import resolve
    from seqzoo.trainer import train

    cache = tmp_path / "cache"
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="task.path: .*absent.* does not exist"):
        train(resolve(byte_run_config(out, cache, tmp_path / "absent")))
    z = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", small_enwik8)
    blob = bytearray(z.read_bytes())
    for i in range(80, 100):
        blob[i] ^= 0xFF
    z.write_bytes(bytes(blob))
    raw = byte_run_config(out, cache, z)
    raw["task"] = {"name": "enwik8", "path": str(z), "seq_len": 32}
    with pytest.raises(ConfigError, match="is corrupt"):
        train(resolve(raw))
    assert not out.exists()
    assert not cache.exists() or files_under(cache) == []


def test_enwik8_from_the_hub_through_datasets(tmp_path, monkeypatch):
    """task.path=hub reads the dataset's splits through datasets.load_dataset (stubbed here: tests never
    download), caches them as one byte file, and fails with a clear message when the hub is out of reach."""
    import datasets

    from seqzoo.common import ConfigError
    from seqzoo.eval.lm.corpus import open_enwik8

    rows = {"train": ["<page>", "alpha beta"], "validation": ["gamma"], "test": ["delta é"]}
    calls = []

    def fake_load(repo, name=None):
        calls.append(repo)
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in rows.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    corpus = open_enwik8("hub", tmp_path / "cache")
    assert calls == ["LTCB/enwik8"]
    assert bytes(corpus.split_bytes("train")) == b"<page>\nalpha beta\n"
    assert bytes(corpus.split_bytes("valid")) == b"gamma\n"
    assert bytes(corpus.split_bytes("test")) == "delta é\n".encode()
    open_enwik8("hub", tmp_path / "cache")  # served from the cache
    assert calls == ["LTCB/enwik8"]

    def offline(repo, name=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"task.path: cannot load the hub dataset 'someone/else'.*enwik8.zip"):
        open_enwik8("hub:someone/else", tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists() or not list((tmp_path / "cache2").iterdir())
