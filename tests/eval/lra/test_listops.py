"""ListOps: the generator's labels against an independent evaluator, its statistics against LRA's spec, and the
released TSV format."""

import random
from collections import Counter

import numpy as np
import pytest

from seqzoo.common import ConfigError
from seqzoo.eval.lra import listops as lo


def test_evaluator_on_hand_computed_expressions():
    cases = {
        "[MAX 2 9 ]": 9,
        "[MIN 4 [MAX 1 3 ] 7 ]": 3,
        "[MED 1 2 3 4 ]": 2,  # median 2.5, truncated
        "[MED 9 0 5 ]": 5,
        "[MED 8 9 ]": 8,  # 8.5 -> 8
        "[SM 7 8 ]": 5,
        "[SM 9 9 9 [SM 5 5 ] ]": 7,  # 27 + 0 = 27 -> 7
        "3": 3,
    }
    for text, value in cases.items():
        assert lo.evaluate_tokens(text.split()) == value, text


@pytest.mark.parametrize("bad", ["[MAX 2 ]", "[MAX 2 3", "2 3", "]", "[MAX 1 2 ] 3", "[MIN 1 2 ] [MAX 1 2 ]"])
def test_evaluator_rejects_malformed_sequences(bad):
    with pytest.raises(ValueError):
        lo.evaluate_tokens(bad.split())


def test_generator_labels_match_the_independent_evaluator():
    trees = lo.generate_listops(300, seed=1, min_length=20, max_length=300)
    for tree in trees:
        tokens = lo.tree_tokens(tree)
        assert lo.evaluate_tokens(tokens) == lo.tree_value(tree)
    labels = Counter(lo.tree_value(t) for t in trees)
    assert len(labels) == 10  # every class occurs
    assert max(labels.values()) / len(trees) < 0.3  # no class dominates (LRA's majority is ~0.1-0.2)


def test_generator_keeps_the_length_filter_depth_and_distinctness():
    trees = lo.generate_listops(40, seed=2)  # LRA's range: 501..1999 tokens
    lengths = [len(lo.tree_tokens(t)) for t in trees]
    assert min(lengths) >= 501 and max(lengths) <= 1999
    assert all(lo.tree_depth(t) <= 10 for t in trees)
    assert len({" ".join(lo.tree_tokens(t)) for t in trees}) == 40
    short = lo.generate_listops(200, seed=3, min_length=100, max_length=512)
    lengths = np.array([len(lo.tree_tokens(t)) for t in short])
    assert lengths.min() >= 100 and lengths.max() <= 512
    assert len({" ".join(lo.tree_tokens(t)) for t in short}) == 200
    # the same seed gives the same data; another seed other data
    assert [lo.tree_tokens(t) for t in lo.generate_listops(5, seed=3, min_length=100, max_length=512)] == \
        [lo.tree_tokens(t) for t in short[:5]]
    assert lo.tree_tokens(lo.generate_listops(1, seed=4, min_length=100, max_length=512)[0]) != lo.tree_tokens(short[0])


def test_unfiltered_tree_statistics_follow_the_spec():
    """LRA's generate_tree: a node below depth 10 is a leaf with p = 0.75, operators have 2..10 arguments
    (uniform), the four operators and the ten digits are uniform, and depth-10 nodes are always leaves."""
    rng = random.Random(0)
    roots_leaf, args, ops, digits, max_depth_nodes = 0, [], Counter(), Counter(), Counter()
    n = 4000

    def walk(t, depth):
        if isinstance(t, int):
            digits[t] += 1
            max_depth_nodes["leaf" if depth == 10 else "other"] += depth == 10
            return
        assert depth < 10, "an operator at depth 10"
        ops[t[0]] += 1
        args.append(len(t[1]))
        for c in t[1]:
            walk(c, depth + 1)

    for _ in range(n):
        tree, length = lo.generate_tree(rng)
        assert length == len(lo.tree_tokens(tree))  # length counts operators, digits and "]"
        roots_leaf += isinstance(tree, int)
        walk(tree, 1)
    # binomial tolerances (about 4 standard deviations)
    assert abs(roots_leaf / n - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5
    assert set(args) == set(range(2, 11))
    assert abs(np.mean(args) - 6.0) < 4 * (np.var(range(2, 11)) / len(args)) ** 0.5
    total_ops = sum(ops.values())
    assert set(ops) == set(lo.OPERATORS)
    assert all(abs(c / total_ops - 0.25) < 4 * (0.25 * 0.75 / total_ops) ** 0.5 for c in ops.values())
    total_digits = sum(digits.values())
    assert all(abs(c / total_digits - 0.1) < 4 * (0.09 / total_digits) ** 0.5 for c in digits.values())


def test_text_form_is_lras_and_reads_back(tmp_path):
    tree = (lo.MAX, [2, 9])
    assert lo.tree_text(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    trees = lo.generate_listops(20, seed=5, min_length=10, max_length=80) + [tree]
    path = tmp_path / "basic_train.tsv"
    lo.write_listops_tsv(path, trees)
    assert path.read_text().splitlines()[0] == "Source\tTarget"
    ids, labels = lo.read_listops_tsv(path)
    assert labels == [lo.tree_value(t) for t in trees]
    assert [list(x) for x in ids] == [list(lo.encode(lo.tree_tokens(t))) for t in trees]
    assert list(ids[-1]) == [lo.TOKEN_ID[s] for s in ("[MAX", "2", "9", "]")]
    # a released-style line written by hand, with the value checked by the evaluator
    path.write_text("Source\tTarget\n( ( ( ( [MED 1 ) ( ( [SM 4 ) 8 ) ] ) ) 7 ) ] )\t2\n")
    ids, labels = lo.read_listops_tsv(path)
    symbols = [lo.SYMBOLS[i - 1] for i in ids[0]]
    assert symbols == ["[MED", "1", "[SM", "4", "8", "]", "7", "]"] and labels == [2]
    assert lo.evaluate_tokens(symbols) == 2


def test_tsv_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "basic_val.tsv"
    path.write_text("Source\tTarget\n( ( [MAX 1 ) [FOO ] )\t1\n")
    with pytest.raises(ValueError, match=r"line 2.*'\[FOO'"):
        lo.read_listops_tsv(path)
    path.write_text("Text\tLabel\n")
    with pytest.raises(ValueError, match="Source"):
        lo.read_listops_tsv(path)


def test_missing_files_say_where_to_put_them(tmp_path):
    settings = lo.ListOpsSettings(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="basic_train.tsv.*lra_release"):
        lo.listops_split(settings, "train")
    (tmp_path / "l").mkdir()
    with pytest.raises(ConfigError, match="basic_val.tsv"):
        lo.listops_split(lo.ListOpsSettings(data_dir=str(tmp_path / "l")), "valid")


def test_generated_splits_are_disjoint_and_sized():
    s = lo.ListOpsSettings(min_length=20, max_length=120, num_train=50, num_valid=10, num_test=10, seed=7)
    splits = {k: lo.listops_split(s, k) for k in ("train", "valid", "test")}
    assert [len(splits[k]["labels"]) for k in ("train", "valid", "test")] == [50, 10, 10]
    seqs = [tuple(x) for k in splits for x in splits[k]["input_ids"]]
    assert len(set(seqs)) == 70


def test_bad_generator_settings_name_the_field():
    with pytest.raises(ConfigError, match="min_length"):
        lo.check_listops_args(600, 512, 10, 10)
    with pytest.raises(ConfigError, match="max_args"):
        lo.check_listops_args(1, 512, 10, 1)
    with pytest.raises(ConfigError, match="min_length.*longest"):
        lo.check_listops_args(100, 512, 2, 10)
