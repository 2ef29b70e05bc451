"""Writer splits and the original pair sampler: counts on CEDAR, determinism, and the pair kinds on a tiny index."""

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from sigverify.data.index import read_index
from sigverify.data.pairs import easy_pairs, hard_pairs, verification_pairs
from sigverify.data.splits import CEDAR_TEST_WRITERS, rows_of_writers, split_writers, writer_folds
from sigverify.errors import ConfigError


def tiny_index(writers=3, genuine=4, forged=3) -> pd.DataFrame:
    rows = []
    for w in range(1, writers + 1):
        rows += [{"path": f"g{w}_{n}", "writer": w, "genuine": True, "sample": n, "label": w} for n in range(1, genuine + 1)]
        rows += [{"path": f"f{w}_{n}", "writer": w, "genuine": False, "sample": n, "label": w + writers}
                 for n in range(1, forged + 1)]
    return pd.DataFrame(rows)


def test_pairs_per_writer_follow_the_original_counts_and_kinds():
    index = tiny_index()
    pairs = verification_pairs(index)
    per_writer = pairs.groupby(["writer", "kind"]).size().unstack()
    assert (per_writer["genuine"] == 6).all() and (per_writer["skilled"] == 6).all() and (per_writer["random"] == 6).all()
    for row in pairs.itertuples():
        a, b = index.iloc[row.a], index.iloc[row.b]
        assert a["genuine"] and a["writer"] == row.writer
        if row.kind == "genuine":
            assert b["genuine"] and b["writer"] == row.writer and row.same == 1
        elif row.kind == "skilled":
            assert not b["genuine"] and b["writer"] == row.writer and row.same == 0
        else:
            assert b["genuine"] and b["writer"] != row.writer and row.same == 0
    skilled = pairs[pairs.kind == "skilled"]
    assert not skilled.duplicated(["a", "b"]).any(), "skilled pairs are drawn without replacement"
    genuine = pairs[pairs.kind == "genuine"]
    assert set(map(tuple, genuine[genuine.writer == 1][["a", "b"]].to_numpy())) == set(combinations(range(4), 2))


def test_pairs_are_deterministic_and_sets_split_by_kind():
    index = tiny_index()
    first, second = verification_pairs(index), verification_pairs(index)
    pd.testing.assert_frame_equal(first, second)
    assert not verification_pairs(index, seed=1).equals(first)
    assert set(hard_pairs(first).kind) == {"genuine", "skilled"}
    assert set(easy_pairs(first).kind) == {"genuine", "random"}


def test_split_uses_cedar_writers_for_cedar_ids_and_a_seeded_split_otherwise():
    train, test = split_writers(range(1, 56))
    assert test == list(CEDAR_TEST_WRITERS) and len(train) == 44 and not set(train) & set(test)
    train, test = split_writers(range(1, 21), seed=3)
    assert len(test) == 4 and not set(train) & set(test) and sorted(train + test) == list(range(1, 21))
    assert split_writers(range(1, 21), seed=3) == (train, test)
    with pytest.raises(ConfigError, match="at least two writers"):
        split_writers([5])


def test_folds_cover_every_writer_once_and_start_with_the_posts_split():
    folds = writer_folds(range(1, 56), 5)
    assert folds[0] == list(CEDAR_TEST_WRITERS)
    assert sorted(w for fold in folds for w in fold) == list(range(1, 56))
    folds = writer_folds(range(1, 11), 3)
    assert sorted(w for fold in folds for w in fold) == list(range(1, 11))
    with pytest.raises(ConfigError, match="FOLDS"):
        writer_folds(range(1, 4), 5)


def test_cedar_pair_counts_match_the_post(cedar_dir):
    index = read_index(cedar_dir)
    train_writers, test_writers = split_writers(index["writer"].unique())
    test = rows_of_writers(index, test_writers)
    train = rows_of_writers(index, train_writers)
    assert len(test) == 528 and len(train) == 2112
    assert test["label"].nunique() == 22 and train["label"].nunique() == 88
    test_pairs, train_pairs = verification_pairs(test), verification_pairs(train)
    assert len(hard_pairs(test_pairs)) == 6072
    assert len(train_pairs) == 36432
    assert (test_pairs.groupby("writer").size() == 828).all()
    assert np.isin(test_pairs["writer"].unique(), CEDAR_TEST_WRITERS).all()
