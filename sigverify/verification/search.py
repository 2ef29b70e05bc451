"""Nearest-reference search over a gallery's enrolled embeddings: exact (NumPy) for a small gallery, a FAISS IVF-Flat
index beyond `EXACT_SEARCH_MAX_REFERENCES`, and the nearest distinct writers among one query's hits."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from sigverify.errors import ConfigError, DataError

# The names of sigverify.distances.METRICS, repeated here so that searching does not import Keras.
METRICS = ("cosine", "euclidean", "squared-euclidean")

# Exact search reads every reference per query, so its latency grows with the gallery. Measured crossover
# (benchmarks/results/gallery.json, one query at a time on a loaded 2-core CPU): exact p50 8.4 ms at 5·10⁴ references,
# 16 ms at 10⁵, 128 ms at 10⁶, against the FAISS index's 6.7 ms at 10⁶; so up to 5·10⁴ exact search stays under the
# 10 ms the index is held to, and needs no build, no index file, and is exact. (From 10⁴ to 5·10⁴ it stays near 8 ms:
# on a busy machine a single query waits for OpenBLAS's second thread; alone on one thread 10⁴ take 0.3 ms.)
EXACT_SEARCH_MAX_REFERENCES = 50_000

# IVF-Flat parameters, measured at 10⁶ clustered 256-d references on the same CPU (bench-gallery's gallery):
# nlist = 4·sqrt(N) cells from k-means on 40 references per cell, probing 1/24 of them, gives recall@1 0.995 against
# exact search at p50 6.7 ms, with a 2-minute build. Probing 1/32 gave 0.991; nlist = 2·sqrt(N) needs more of the
# gallery scanned for the same recall (0.984 at 1/32); HNSW (M = 32, efConstruction = 40) took 11 minutes to build and
# reached 0.985 at efSearch = 512.
IVF_CELLS_PER_SQRT_REFERENCE = 4
IVF_TRAINING_REFERENCES_PER_CELL = 40
IVF_PROBED_FRACTION = 1 / 24
# FAISS's k-means warns below 39 training points per cell: a small gallery gets fewer cells instead.
IVF_MIN_REFERENCES_PER_CELL = 39

# Exact search takes queries in blocks of at most this many scores or hit coordinates (64 MiB of float32).
_EXACT_BLOCK_SCORES = 1 << 24
_ADD_BLOCK_ROWS = 1 << 16
# FAISS's messages start with the C++ function and source line that raised them: not what a user needs to read.
_FAISS_ERROR_PREFIX = re.compile(r"^Error in .*? at \S+:\d+: (Error: '[^']*' failed: )?")
# tf.math.l2_normalize's floor on the squared norm, as sigverify.distances uses it: a zero row stays zero.
_NORMALIZE_EPSILON = 1e-12


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"distance {metric!r} is not known; expected one of {', '.join(METRICS)}")


def _float32_rows(array, what: str, dimension: int | None = None) -> np.ndarray:
    rows = np.ascontiguousarray(array, dtype=np.float32)
    if rows.ndim != 2 or len(rows) == 0 or (dimension is not None and rows.shape[1] != dimension):
        expected = f"N×{dimension}" if dimension is not None else "N×D"
        raise DataError(f"{what}: shape {rows.shape}; expected a non-empty {expected} array of embeddings")
    return rows


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    squared_norms = np.einsum("nd,nd->n", rows, rows)[:, None]
    return rows / np.sqrt(np.maximum(squared_norms, np.float32(_NORMALIZE_EPSILON)))


class ReferenceIndex:
    """Reference embeddings (N×D float32) searchable for the k nearest to a query under one of METRICS.

    Made by `build` (or `load`); `kind` says how it searches ("exact" or the FAISS index with its parameters), `size`
    is N. Cosine distance is 1 − cosine similarity (a zero vector has similarity 0), "euclidean" the L2 distance,
    "squared-euclidean" its square: the definitions of sigverify.distances.
    """

    def __init__(self, metric: str, dimension: int, exact_references: np.ndarray | None = None, faiss_index=None):
        self.metric = metric
        self.dimension = dimension
        # Exact search keeps unit rows for cosine, the rows themselves (and their squared norms) for L2.
        self._exact_references = exact_references
        self._squared_norms = (None if exact_references is None or metric == "cosine"
                               else np.einsum("nd,nd->n", exact_references, exact_references))
        self._faiss_index = faiss_index

    @classmethod
    def build(cls, embeddings: np.ndarray, metric: str,
              exact_max: int = EXACT_SEARCH_MAX_REFERENCES) -> ReferenceIndex:
        """An index over `embeddings` (N×D float32, left unchanged): exact when N ≤ `exact_max`, else a FAISS
        IVF-Flat index (inner product on unit-normalised copies for cosine, L2 otherwise) trained on a sample."""
        _check_metric(metric)
        references = _float32_rows(embeddings, "reference embeddings")
        if len(references) <= exact_max:
            # Copies of the caller's rows: the index must not change when the caller's array does.
            exact_references = _unit_rows(references) if metric == "cosine" else references.copy()
            return cls(metric, references.shape[1], exact_references=exact_references)
        return cls(metric, references.shape[1], faiss_index=_ivf_flat_index(references, metric))

    @property
    def size(self) -> int:
        return int(self._faiss_index.ntotal) if self._faiss_index is not None else len(self._exact_references)

    @property
    def kind(self) -> str:
        if self._faiss_index is None:
            return "exact"
        return f"faiss IVF-Flat nlist={self._faiss_index.nlist} nprobe={self._faiss_index.nprobe}"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest references of each query (Q×D float32), nearest first: (distances Q×k float64 in the
        metric's own units, positions Q×k int64 into the embeddings the index was built from). k is clamped to N.
        The FAISS index sees only the references of the cells it probes: where those hold fewer than k, the row ends
        with position −1 and distance inf."""
        if k < 1:
            raise ConfigError(f"k={k}: expected at least one nearest reference")
        queries = _float32_rows(queries, "query embeddings", self.dimension)
        if self.metric == "cosine":
            queries = _unit_rows(queries)
        k = min(k, self.size)
        if self._faiss_index is None:
            return self._exact_search(queries, k)
        similarities_or_squared, positions = self._faiss_index.search(queries, k)
        missing = positions < 0
        if self.metric == "cosine":
            distances = 1.0 - similarities_or_squared.astype(np.float64)
        else:
            distances = np.maximum(similarities_or_squared.astype(np.float64), 0.0)
            if self.metric == "euclidean":
                distances = np.sqrt(distances)
        distances[missing] = np.inf
        return distances, positions.astype(np.int64)

    def _exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        references = self._exact_references
        block = max(1, _EXACT_BLOCK_SCORES // max(len(references), k * self.dimension))
        distances = np.empty((len(queries), k), dtype=np.float64)
        positions = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), block):
            chunk = queries[start:start + block]
            products = chunk @ references.T
            # Ranked by what differs between references: −similarity, or ‖r‖² − 2 q·r (‖q‖² is common to a row).
            ranking = -products if self.metric == "cosine" else self._squared_norms - 2.0 * products
            nearest = np.argpartition(ranking, k - 1, axis=1)[:, :k]
            if self.metric == "cosine":
                chunk_distances = 1.0 - np.take_along_axis(products, nearest, axis=1).astype(np.float64)
            else:
                # Recomputed from the differences: the Gram-matrix form loses the small distances to cancellation.
                differences = chunk[:, None, :] - references[nearest]
                chunk_distances = np.einsum("qkd,qkd->qk", differences, differences).astype(np.float64)
                if self.metric == "euclidean":
                    chunk_distances = np.sqrt(chunk_distances)
            order = np.argsort(chunk_distances, axis=1, kind="stable")
            distances[start:start + block] = np.take_along_axis(chunk_distances, order, axis=1)
            positions[start:start + block] = np.take_along_axis(nearest, order, axis=1)
        return distances, positions

    def save(self, path: str | os.PathLike) -> None:
        """The index written to one FAISS file at `path` (an exact index as a flat FAISS index of its rows), through a
        temporary file beside it renamed into place, so that a reader never sees a half-written index."""
        import faiss

        path = Path(path)
        index = self._faiss_index
        if index is None:
            index = faiss.IndexFlatIP(self.dimension) if self.metric == "cosine" else faiss.IndexFlatL2(self.dimension)
            index.add(self._exact_references)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(index, str(temporary))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike, metric: str) -> ReferenceIndex:
        """The index that `save` wrote to `path`, for `metric` (the one it was built with; the file records only inner
        product or L2). A missing, damaged or foreign file raises DataError: the caller rebuilds the index."""
        import faiss

        _check_metric(metric)
        distance_names = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2"}
        wanted_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        expected = (f"expected a FAISS IVF-Flat or flat index of {distance_names[wanted_metric]} distances (for "
                    f"{metric}) written by ReferenceIndex.save")
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, OSError, MemoryError) as error:
            reason = _FAISS_ERROR_PREFIX.sub("", str(error).strip()) or type(error).__name__
            raise DataError(f"{path}: not a readable search index ({reason}); {expected}") from error
        if not isinstance(index, (faiss.IndexIVFFlat, faiss.IndexFlat)) or index.metric_type != wanted_metric:
            found = distance_names.get(index.metric_type, f"metric type {index.metric_type}")
            raise DataError(f"{path}: a FAISS {type(index).__name__} of {found} distances; {expected}")
        if index.ntotal == 0 or not index.is_trained:
            raise DataError(f"{path}: an index without references; {expected}")
        if isinstance(index, faiss.IndexIVFFlat):
            return cls(metric, index.d, faiss_index=index)
        return cls(metric, index.d, exact_references=np.ascontiguousarray(index.reconstruct_n(0, index.ntotal)))


def _ivf_flat_index(references: np.ndarray, metric: str):
    """A trained IVF-Flat index holding `references` (as unit rows for cosine), its cells from k-means on a sample."""
    import faiss

    def prepared(rows):
        return _unit_rows(rows) if metric == "cosine" else rows

    count, dimension = references.shape
    cells = max(1, min(round(IVF_CELLS_PER_SQRT_REFERENCE * math.sqrt(count)), count // IVF_MIN_REFERENCES_PER_CELL))
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    quantizer = faiss.IndexFlatIP(dimension) if metric == "cosine" else faiss.IndexFlatL2(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, cells, faiss_metric)
    training_count = min(count, cells * IVF_TRAINING_REFERENCES_PER_CELL)
    sample = np.random.default_rng(0).choice(count, size=training_count, replace=False)
    index.train(prepared(references[np.sort(sample)]))
    # Added in blocks, so that normalising never holds a second copy of the gallery.
    for start in range(0, count, _ADD_BLOCK_ROWS):
        index.add(prepared(references[start:start + _ADD_BLOCK_ROWS]))
    index.nprobe = max(1, math.ceil(cells * IVF_PROBED_FRACTION))
    return index


def nearest_writers(distances_row: np.ndarray, positions_row: np.ndarray, reference_writers: np.ndarray,
                    top: int) -> list[tuple[str, float]]:
    """The `top` nearest distinct writers among one query's hits (a row of `ReferenceIndex.search`), nearest first,
    each with its smallest distance; `reference_writers[p]` is the writer of reference position p.

    Only the hits are seen: a writer none of whose references is among them is missing. For the true `top` nearest
    writers, search k = min(N, top × the most references any writer has): then the hits hold at least `top` writers,
    and any writer nearer than the `top`-th of them has its nearest reference among the hits. Positions −1 (no hit)
    are skipped.
    """
    ranked: dict[str, float] = {}
    for hit in np.argsort(distances_row, kind="stable"):
        if len(ranked) >= top:
            break
        position = int(positions_row[hit])
        if position >= 0:
            ranked.setdefault(str(reference_writers[position]), float(distances_row[hit]))
    return list(ranked.items())
