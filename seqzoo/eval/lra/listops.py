"""ListOps (Nangia & Bowman 2018, in LRA's long form): nested MIN / MAX / MED / SM (sum mod 10) expressions over
the digits 0-9; the label is the expression's value (10 classes).

The generator is a seeded reimplementation of LRA's ``lra_benchmarks/data/listops.py``:

- a tree is grown from depth 1; below ``max_depth`` (10) a node is a leaf (a uniform digit) with probability
  0.75, at ``max_depth`` always; an operator node has 2..``max_args`` (10) children (uniform), then a uniform
  operator;
- the *length* of a tree counts the operator token, the digits and the closing ``]`` (parentheses are not
  tokens): a leaf is 1, an operator node 2 + its children;
- LRA keeps a tree when ``500 < length < 2000`` and only distinct trees, 96k / 2k / 2k. Here the bounds are
  inclusive settings, ``min_length = 501`` and ``max_length = 1999`` (the same filter), so a CPU run can ask
  for ``max_length: 512``;
- values: MIN, MAX; MED = ``int(numpy.median(args))`` (the mean of the two middle values, truncated); SM =
  ``sum(args) % 10``.

The random calls are LRA's, in LRA's order (``random()`` for the leaf test, ``choice`` of a digit,
``randint(2, max_args)``, the children, then ``choice`` of the operator), on a ``random.Random`` seeded with
the split's seed. LRA does not seed its generator and draws one pool it then cuts into train / val / test;
here one pool of ``num_train + num_valid + num_test`` distinct trees is drawn from ``seed`` and cut in that
order, so the splits never share a sequence and the same settings always give the same data.

Released files: ``basic_{train,val,test}.tsv`` in ``listops-1000/`` of ``lra_release.gz``, a header
``Source\tTarget``, the expression written with each argument nested in parentheses
(``( ( ( [MAX 2 ) 9 ) ] )``). :func:`read_listops_tsv` reads them (``task.data_dir``); the parentheses are
dropped and the rest split on whitespace, into the 15 symbols below. (LRA's own pipeline tokenized with a
tokenizer that keeps alphanumeric tokens only, so it also dropped the ``]``; S4 and later papers keep it, as
we do: without it the nesting is ambiguous.)

Token ids: 0 = pad, 1..10 = the digits 0..9, 11..14 = ``[MIN [MAX [MED [SM``, 15 = ``]`` (vocabulary 16).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...common import ConfigError
from ._common import LRA_RELEASE, check_split, require_dir, require_file, split_seed

MIN, MAX, MED, SM, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SM)  # LRA's order (random.choice picks by index)
DIGITS = tuple(range(10))
LEAF_PROBABILITY = 0.75  # LRA's VALUE_P = 0.25 is the probability of an operator node

PAD_ID = 0
SYMBOLS = tuple(str(d) for d in DIGITS) + OPERATORS + (END,)
TOKEN_ID = {s: i + 1 for i, s in enumerate(SYMBOLS)}  # "0" -> 1, ..., "9" -> 10, "[MIN" -> 11, ..., "]" -> 15
VOCAB_SIZE = len(SYMBOLS) + 1
NUM_CLASSES = 10

SPLIT_FILES = {"train": "basic_train.tsv", "valid": "basic_val.tsv", "test": "basic_test.tsv"}
HOW_TO_GET = (f"Put LRA's released ListOps files basic_train.tsv, basic_val.tsv, basic_test.tsv there (folder "
              f"listops-1000/ of {LRA_RELEASE}), or leave task.data_dir null to generate the data")


# --------------------------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------------------------

def generate_tree(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10):
    """One random tree as ``(tree, length)``: a leaf is an int, an operator node ``(op, [children])``.

    The random calls are LRA's ``generate_tree``'s, in its order."""
    r = rng.random() if depth < max_depth else 1.0
    if r > 1.0 - LEAF_PROBABILITY:
        return rng.choice(DIGITS), 1
    num_args = rng.randint(2, max_args)
    children, length = [], 2  # the operator and its "]"
    for _ in range(num_args):
        child, child_length = generate_tree(rng, depth + 1, max_depth, max_args)
        children.append(child)
        length += child_length
    return (rng.choice(OPERATORS), children), length


def _bounded_tree(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: int):
    """:func:`generate_tree` that gives up (returns ``(None, length)``) once the tree has more than ``budget``
    tokens. The trees it completes are distributed exactly as :func:`generate_tree`'s that fit the budget (the
    same calls in the same order until it gives up), and a tree it gives up on would have been rejected by the
    length filter; stopping early only saves the time of growing it (LRA's trees are supercritical: an operator
    has 1.5 operator children on average, so an unbounded draw grows to depth 10 and is often huge)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > 1.0 - LEAF_PROBABILITY:
        return rng.choice(DIGITS), 1
    num_args = rng.randint(2, max_args)
    children, length = [], 2
    for _ in range(num_args):
        child, child_length = _bounded_tree(rng, depth + 1, max_depth, max_args, budget - length)
        length += child_length
        if child is None or length > budget:
            return None, length
        children.append(child)
    return (rng.choice(OPERATORS), children), length


def tree_value(tree) -> int:
    """The value of a tree (recursive over the tree; the label)."""
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [tree_value(c) for c in children]
    if op == MIN:
        return min(values)
    if op == MAX:
        return max(values)
    if op == MED:
        return int(np.median(values))
    return int(np.sum(values)) % 10


def tree_tokens(tree) -> list[str]:
    """The token sequence of a tree (no parentheses): ``[MAX 2 9 ]``."""
    out: list[str] = []

    def walk(t):
        if isinstance(t, int):
            out.append(str(t))
            return
        op, children = t
        out.append(op)
        for c in children:
            walk(c)
        out.append(END)

    walk(tree)
    return out


def tree_text(tree) -> str:
    """The tree in the released files' text form, each argument nested in parentheses as LRA's ``to_string``
    writes its left-nested pairs: ``[MAX 2 9 ]`` is ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = op
    for child in [*children, END]:
        text = f"( {text} {child if isinstance(child, str) else tree_text(child)} )"
    return text


def tree_depth(tree) -> int:
    """Depth of a tree; a lone leaf has depth 1 (LRA's root is depth 1)."""
    if isinstance(tree, int):
        return 1
    return 1 + max(tree_depth(c) for c in tree[1])


def check_listops_args(min_length: int, max_length: int, max_depth: int, max_args: int, prefix: str = "") -> None:
    for name, value in (("min_length", min_length), ("max_length", max_length), ("max_depth", max_depth),
                        ("max_args", max_args)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{prefix}{name}: expected a positive integer, got {value!r}")
    if min_length > max_length:
        raise ConfigError(f"{prefix}min_length: {min_length} is above max_length ({max_length}); expected "
                          f"min_length <= max_length (LRA: 501 and 1999)")
    if max_args < 2:
        raise ConfigError(f"{prefix}max_args: an operator needs at least 2 arguments, got {max_args}")
    if max_depth > 1:
        # the longest tree the depth and argument limits allow: a full max_args-ary tree of depth max_depth
        longest = 1
        for _ in range(max_depth - 1):
            longest = 2 + max_args * longest
        if longest < min_length:
            raise ConfigError(f"{prefix}min_length: no tree of depth <= {max_depth} with <= {max_args} arguments "
                              f"is {min_length} tokens long (the longest is {longest})")
    elif min_length > 1:
        raise ConfigError(f"{prefix}min_length: with max_depth 1 every tree is one digit; expected min_length 1")


def generate_listops(num_examples: int, seed: int, min_length: int = 501, max_length: int = 1999,
                     max_depth: int = 10, max_args: int = 10, max_tries: int | None = None) -> list:
    """``num_examples`` distinct trees with ``min_length <= length <= max_length``, in the order drawn (each
    draw is LRA's ``generate_tree(1, max_depth, max_args)``, abandoned once it outgrows ``max_length``).

    ``max_tries`` (default 2000 per example + 10^5) bounds the draws, so settings that almost never give a tree
    in the length range fail with an error instead of running forever."""
    check_listops_args(min_length, max_length, max_depth, max_args)
    rng = random.Random(int(seed))
    max_tries = max_tries if max_tries is not None else 2000 * num_examples + 100_000
    trees, seen = [], set()
    for _ in range(max_tries):
        if len(trees) == num_examples:
            break
        tree, length = _bounded_tree(rng, 1, max_depth, max_args, max_length)
        if tree is not None and min_length <= length <= max_length:
            key = " ".join(tree_tokens(tree))
            if key not in seen:
                seen.add(key)
                trees.append(tree)
    if len(trees) < num_examples:
        raise ConfigError(f"ListOps: only {len(trees)} of {num_examples} distinct trees with "
                          f"{min_length} <= length <= {max_length} in {max_tries} draws; widen the length range "
                          f"or ask for fewer examples")
    return trees


# --------------------------------------------------------------------------------------------------------------
# tokens, the independent evaluator, the released files
# --------------------------------------------------------------------------------------------------------------

def tokenize(text: str, where: str = "ListOps") -> list[str]:
    """The symbols of an expression in the released text form (parentheses dropped, split on whitespace)."""
    symbols = text.replace("(", " ").replace(")", " ").split()
    for s in symbols:
        if s not in TOKEN_ID:
            raise ValueError(f"{where}: unknown symbol {s!r}; expected one of {', '.join(SYMBOLS)}")
    return symbols


def encode(symbols: list[str]) -> np.ndarray:
    return np.array([TOKEN_ID[s] for s in symbols], dtype=np.int64)


def evaluate_tokens(symbols: list[str]) -> int:
    """The value of a token sequence, by a stack machine over the symbols (written independently of the tree
    code, so a test can check the generator's labels against it). Raises ValueError on a malformed sequence."""
    stack: list[tuple[str, list[int]]] = []  # open operators and the values of their arguments so far
    result: int | None = None
    for i, s in enumerate(symbols):
        if s in OPERATORS:
            if result is not None:
                raise ValueError(f"ListOps: symbol {i} ({s!r}) after the expression ended")
            stack.append((s, []))
        elif s == END:
            if not stack:
                raise ValueError(f"ListOps: symbol {i} closes no operator")
            op, args = stack.pop()
            if len(args) < 2:
                raise ValueError(f"ListOps: operator {op!r} closed at symbol {i} with {len(args)} argument(s)")
            ordered = sorted(args)
            n = len(ordered)
            if op == MIN:
                value = ordered[0]
            elif op == MAX:
                value = ordered[-1]
            elif op == MED:  # the middle value, or the two middles' mean rounded toward zero
                value = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2
            else:
                value = sum(args) % 10
            if stack:
                stack[-1][1].append(value)
            elif result is None:
                result = value
            else:
                raise ValueError(f"ListOps: a second expression ends at symbol {i}")
        else:
            digit = int(s)
            if stack:
                stack[-1][1].append(digit)
            elif result is None and len(symbols) == 1:
                result = digit
            else:
                raise ValueError(f"ListOps: digit {s!r} at symbol {i} is outside every operator")
    if stack or result is None:
        raise ValueError(f"ListOps: {len(stack)} operator(s) left open at the end")
    return result


def read_listops_tsv(path: str | Path, max_length: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """A released ``basic_*.tsv``: ``(token ids per example, labels)``. Sequences longer than ``max_length`` are
    cut (LRA's pipeline does the same at its max length)."""
    path = require_file(Path(path), "ListOps file", HOW_TO_GET)
    ids, labels = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise ValueError(f"ListOps file {str(path)!r}: expected the header 'Source<TAB>Target', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"ListOps file {str(path)!r} line {line_no}: expected 2 tab-separated fields, "
                                 f"got {len(row)}")
            symbols = tokenize(row[0], where=f"ListOps file {str(path)!r} line {line_no}")
            label = int(row[1])
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"ListOps file {str(path)!r} line {line_no}: label {label} outside 0..9")
            tokens = encode(symbols)
            ids.append(tokens[:max_length] if max_length is not None else tokens)
            labels.append(label)
    return ids, labels


def write_listops_tsv(path: str | Path, trees: list) -> None:
    """Write trees in the released format (``Source\\tTarget`` header, the parenthesized text, the value)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["Source", "Target"])
        for tree in trees:
            writer.writerow([tree_text(tree), tree_value(tree)])


# --------------------------------------------------------------------------------------------------------------
# the task settings (the Task class is registered in seqzoo.eval.lra.tasks)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ListOpsSettings:
    data_dir: str | None = None  # folder with LRA's basic_{train,val,test}.tsv; null: generate the data
    min_length: int = 501  # generator: shortest kept tree in tokens (LRA: length > 500)
    max_length: int = 1999  # generator: longest kept tree (LRA: length < 2000); also the cut for released files
    max_depth: int = 10  # generator: deepest node (the root is depth 1)
    max_args: int = 10  # generator: most arguments of an operator (at least 2)
    num_train: int = 96_000
    num_valid: int = 2_000
    num_test: int = 2_000
    seed: int = 0


_POOL: dict = {}  # the last generated pool (the three splits are cut from it)


def listops_split(settings: ListOpsSettings, split: str) -> dict:
    """The columns of one split: ``input_ids`` (variable length) and ``labels``."""
    check_split(split)
    s = settings
    if s.data_dir is not None:
        folder = require_dir(Path(s.data_dir), "task.data_dir", HOW_TO_GET)
        ids, labels = read_listops_tsv(require_file(folder / SPLIT_FILES[split], "ListOps file", HOW_TO_GET),
                                       max_length=s.max_length)
        return {"input_ids": ids, "labels": labels}
    sizes = {"train": s.num_train, "valid": s.num_valid, "test": s.num_test}
    key = (sum(sizes.values()), split_seed(s.seed, "train"), s.min_length, s.max_length, s.max_depth, s.max_args)
    if key not in _POOL:  # one pool for the three splits: generate it once per process
        _POOL.clear()
        _POOL[key] = generate_listops(*key)
    trees = _POOL[key]
    start = {"train": 0, "valid": s.num_train, "test": s.num_train + s.num_valid}[split]
    chosen = trees[start:start + sizes[split]]
    return {"input_ids": [encode(tree_tokens(t)) for t in chosen], "labels": [tree_value(t) for t in chosen]}


__all__ = ["ListOpsSettings", "evaluate_tokens", "generate_listops", "generate_tree", "listops_split",
           "read_listops_tsv", "tokenize", "tree_depth", "tree_text", "tree_tokens", "tree_value",
           "write_listops_tsv"]
