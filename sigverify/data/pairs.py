"""Verification pairs, sampled exactly as the original experiments did (SPEC: one NumPy seed 42 set before the loop)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["a", "b", "same", "kind", "writer"]
PAIR_KINDS = ("genuine", "skilled", "random")  # a pair classifier's classes, in this order


def verification_pairs(index: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """Per writer of `index`: every genuine–genuine pair (same=1, kind "genuine"), as many genuine–skilled-forgery pairs
    drawn without replacement from the genuine×forgery product (same=0, kind "skilled"), and as many genuine–random pairs
    with another writer's genuine image (same=0, kind "random").

    `a` and `b` are positions in `index`. With CEDAR's 24 + 24 images per writer this gives 276 + 276 + 276 pairs per
    writer: 6,072 hard test pairs on the 11 held-out writers, 36,432 training pairs on the other 44.
    """
    rng = np.random.RandomState(seed)
    index = index.reset_index(drop=True)
    genuine_by_writer = {w: rows.index.to_numpy() for w, rows in index[index["genuine"]].groupby("writer")}
    forged_by_writer = {w: rows.index.to_numpy() for w, rows in index[~index["genuine"]].groupby("writer")}
    rows = []
    for writer in sorted(genuine_by_writer):
        genuine = genuine_by_writer[writer]
        forged = forged_by_writer.get(writer, np.array([], dtype=int))
        genuine_pairs = list(combinations(genuine.tolist(), 2))
        rows += [(a, b, 1, "genuine", writer) for a, b in genuine_pairs]
        n_pairs = len(genuine_pairs)
        if len(forged):
            product = rng.choice(len(genuine) * len(forged), size=min(n_pairs, len(genuine) * len(forged)), replace=False)
            rows += [(genuine[i // len(forged)], forged[i % len(forged)], 0, "skilled", writer) for i in product]
        others = np.concatenate([g for w, g in genuine_by_writer.items() if w != writer] or [np.array([], dtype=int)])
        if len(others):
            anchors = rng.choice(genuine, size=n_pairs)
            strangers = rng.choice(others, size=n_pairs)
            rows += [(a, b, 0, "random", writer) for a, b in zip(anchors, strangers)]
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return pairs.astype({"a": int, "b": int, "same": int, "writer": int})


def hard_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Genuine pairs against skilled forgeries (the post's reported figures)."""
    return pairs[pairs["kind"].isin(["genuine", "skilled"])].reset_index(drop=True)


def easy_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Genuine pairs against random forgeries (another writer's genuine signature)."""
    return pairs[pairs["kind"].isin(["genuine", "random"])].reset_index(drop=True)


def with_kind_classes(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs with a column `kind_class`: the position of each pair's kind in PAIR_KINDS (a pair classifier's target)."""
    return pairs.assign(kind_class=pairs["kind"].map({kind: i for i, kind in enumerate(PAIR_KINDS)}).astype(int))
