"""Writer-disjoint splits: CEDAR's held-out writers of the original experiments, a seeded split otherwise, and k folds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sigverify.errors import ConfigError

CEDAR_TEST_WRITERS = (2, 7, 8, 9, 15, 16, 18, 35, 41, 44, 48)
CEDAR_WRITERS = tuple(range(1, 56))


def uses_cedar_split(writers) -> bool:
    """The post's held-out writers apply to any set with CEDAR's 55 writer ids (CEDAR itself and the synthetic default)."""
    return tuple(sorted(int(w) for w in writers)) == CEDAR_WRITERS


def split_writers(writers, test_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train_writers, test_writers): CEDAR's published held-out writers when the ids are CEDAR's, else a seeded
    writer-disjoint split with `test_fraction` of the writers (at least one on each side)."""
    writers = sorted(int(w) for w in set(writers))
    if len(writers) < 2:
        raise ConfigError(f"a dataset needs at least two writers to split into train and test, found {len(writers)}")
    if uses_cedar_split(writers):
        test = list(CEDAR_TEST_WRITERS)
    else:
        n_test = min(len(writers) - 1, max(1, round(test_fraction * len(writers))))
        test = sorted(np.random.default_rng(seed).choice(writers, size=n_test, replace=False).tolist())
    return [w for w in writers if w not in test], test


def writer_folds(writers, k: int, seed: int = 0) -> list[list[int]]:
    """k disjoint test-writer folds covering every writer; on CEDAR's ids fold 0 is the post's split."""
    writers = sorted(int(w) for w in set(writers))
    if not 2 <= k <= len(writers):
        raise ConfigError(f"FOLDS={k}: expected a number of folds from 2 to the number of writers ({len(writers)})")
    if uses_cedar_split(writers) and k == 5:
        rest = [w for w in writers if w not in CEDAR_TEST_WRITERS]
        rest = np.random.default_rng(seed).permutation(rest).tolist()
        return [list(CEDAR_TEST_WRITERS)] + [sorted(rest[i::4]) for i in range(4)]
    shuffled = np.random.default_rng(seed).permutation(writers).tolist()
    return [sorted(shuffled[i::k]) for i in range(k)]


def rows_of_writers(index: pd.DataFrame, writers) -> pd.DataFrame:
    """The index rows of these writers, renumbered from 0 (pair tables refer to positions in such a table)."""
    return index[index["writer"].isin(list(writers))].reset_index(drop=True)
