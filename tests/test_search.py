"""Tests for sigverify.verification.search: exact and FAISS search agree, their distances are sigverify.distances', the
nearest distinct writers, and the index file's round trip and damage."""

import numpy as np
import pytest

from sigverify.distances import METRICS, paired_distances_numpy
from sigverify.errors import ConfigError, DataError
from sigverify.verification.search import METRICS as SEARCH_METRICS
from sigverify.verification.search import ReferenceIndex, nearest_writers

WRITERS, REFERENCES_PER_WRITER, DIM = 200, 10, 32


def clustered_gallery(seed=0):
    """(references N×D, writer of each reference, queries Q×D, writer of each query): writers as tight clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(WRITERS, DIM)).astype(np.float32)
    writers = np.repeat(np.arange(WRITERS), REFERENCES_PER_WRITER)
    references = centres[writers] + 0.1 * rng.normal(size=(len(writers), DIM)).astype(np.float32)
    query_writers = rng.integers(0, WRITERS, 50)
    queries = centres[query_writers] + 0.1 * rng.normal(size=(len(query_writers), DIM)).astype(np.float32)
    return references, np.array([f"w{w:03d}" for w in writers], dtype=object), queries, query_writers


@pytest.fixture(scope="module")
def gallery():
    return clustered_gallery()


def test_metric_names_are_those_of_distances():
    assert set(SEARCH_METRICS) == set(METRICS)


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_and_exact_search_agree_on_top1(gallery, metric):
    references, _, queries, _ = gallery
    exact = ReferenceIndex.build(references, metric)
    approximate = ReferenceIndex.build(references, metric, exact_max=100)
    assert exact.kind == "exact" and approximate.kind.startswith("faiss IVF-Flat")
    assert exact.size == approximate.size == len(references)
    _, exact_positions = exact.search(queries, 3)
    _, approximate_positions = approximate.search(queries, 3)
    np.testing.assert_array_equal(approximate_positions[:, 0], exact_positions[:, 0])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("exact_max", [10**6, 100])
def test_distances_are_those_of_distances_module(gallery, metric, exact_max):
    references, _, queries, _ = gallery
    references = np.concatenate([references, np.zeros((1, DIM), np.float32)])  # a zero vector: cosine similarity 0
    queries = np.concatenate([queries, np.zeros((1, DIM), np.float32)])
    distances, positions = ReferenceIndex.build(references, metric, exact_max=exact_max).search(queries, 5)
    assert distances.dtype == np.float64 and positions.dtype == np.int64 and distances.shape == (len(queries), 5)
    assert np.all(np.diff(distances, axis=1) >= 0)
    expected = paired_distances_numpy(np.repeat(queries, 5, axis=0), references[positions.ravel()], metric)
    np.testing.assert_allclose(distances.ravel(), expected, rtol=1e-4, atol=1e-5)


def test_exact_search_finds_the_true_nearest_and_clamps_k(gallery):
    references, _, queries, _ = gallery
    distances, positions = ReferenceIndex.build(references[:7], "euclidean").search(queries[:4], 20)
    assert positions.shape == (4, 7)
    loop = np.linalg.norm(queries[:4, None, :] - references[None, :7, :], axis=2)
    np.testing.assert_array_equal(positions, np.argsort(loop, axis=1))
    np.testing.assert_allclose(distances, np.sort(loop, axis=1), rtol=1e-5)


def test_nearest_writers_deduplicates_and_keeps_the_smallest_distance():
    writers = np.array(["ann", "bob", "ann", "cyd", "bob", "dee"], dtype=object)
    distances = np.array([0.2, 0.1, 0.15, 0.4, 0.3, np.inf])
    positions = np.array([0, 1, 2, 3, 4, -1])
    assert nearest_writers(distances, positions, writers, top=5) == [("bob", 0.1), ("ann", 0.15), ("cyd", 0.4)]
    assert nearest_writers(distances, positions, writers, top=2) == [("bob", 0.1), ("ann", 0.15)]


def test_nearest_writers_of_a_search_finds_the_query_writer(gallery):
    references, reference_writers, queries, query_writers = gallery
    index = ReferenceIndex.build(references, "cosine")
    distances, positions = index.search(queries, 3 * REFERENCES_PER_WRITER)
    for row, writer in enumerate(query_writers):
        ranked = nearest_writers(distances[row], positions[row], reference_writers, top=3)
        assert len(ranked) == 3 and len({w for w, _ in ranked}) == 3
        assert ranked[0] == (f"w{writer:03d}", distances[row, 0])


@pytest.mark.parametrize("exact_max", [10**6, 100])
def test_save_and_load_give_the_same_search(gallery, tmp_path, exact_max):
    references, _, queries, _ = gallery
    index = ReferenceIndex.build(references, "cosine", exact_max=exact_max)
    path = tmp_path / "gallery.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.faiss"]  # no temporary file left beside it
    loaded = ReferenceIndex.load(path, "cosine")
    assert (loaded.kind, loaded.size) == (index.kind, index.size)
    for expected, found in zip(index.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-6)


def test_damaged_or_foreign_index_file_raises_data_error_naming_it(gallery, tmp_path):
    references, *_ = gallery
    path = tmp_path / "gallery.faiss"
    ReferenceIndex.build(references, "euclidean", exact_max=100).save(path)
    with pytest.raises(DataError, match="inner product"):
        ReferenceIndex.load(path, "cosine")  # built for another metric
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"not an index"):
        path.write_bytes(damaged)
        with pytest.raises(DataError, match="gallery.faiss: not a readable search index") as error:
            ReferenceIndex.load(path, "euclidean")
        assert str(path) in str(error.value) and "expected a FAISS" in str(error.value)
    with pytest.raises(DataError, match="missing.faiss"):
        ReferenceIndex.load(tmp_path / "missing.faiss", "euclidean")


def test_bad_arguments_are_refused(gallery):
    references, *_ = gallery
    with pytest.raises(ConfigError, match="expected one of"):
        ReferenceIndex.build(references, "manhattan")
    index = ReferenceIndex.build(references, "cosine")
    with pytest.raises(ConfigError, match="k=0"):
        index.search(references[:1], 0)
    with pytest.raises(DataError, match="expected a non-empty N×32"):
        index.search(references[:1, :8], 1)
    with pytest.raises(DataError, match="non-empty"):
        ReferenceIndex.build(np.zeros((0, DIM), np.float32), "cosine")
