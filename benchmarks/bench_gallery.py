"""bench-gallery: nearest-writer search over a gallery of 10⁶ enrolled 256-d embeddings (100,000 writers × 10
references, cosine distance): the FAISS index that `sigverify.verification.search.ReferenceIndex` builds beyond
`EXACT_SEARCH_MAX_REFERENCES` against exact search, and exact search's latency as the gallery grows.

The gallery is synthetic, shaped like trained embeddings: each writer a unit centre whose coordinate i has variance
∝ i^-1.25 (trained embeddings concentrate in few directions), each reference and query the centre plus isotropic
noise (--noise, norm ≈ 1.1), renormalised, so that the exact nearest reference belongs to the query's writer for about
nine queries in ten. Queries are fresh samples of random enrolled writers. Isotropic centres (--spectrum-decay 0, with
--noise 1.65 for the same accuracy) are no model of a trained embedding: every writer is then nearly orthogonal to every
other, and no index found the exact nearest reference in a few ms (IVF-Flat, 4096 cells, 256 probed: recall@1 0.42 at
5 ms per query among 10⁶; HNSW, M = 32, efSearch = 512: 0.79 at 4 ms among 10⁵).

Measured: the index's build time, its size (the file `save` writes) and the growth of the peak resident set during
the build, its save and load time; p50/p95 latency of one query at a time (k = 50: the top 5 writers of 10
references each); recall@1 against exact search (the same top-1 reference, and the same top-1 writer); exact search's
p50 latency at 10³ … 10⁶ references, which sets EXACT_SEARCH_MAX_REFERENCES. Targets: p50 < 10 ms with recall@1 ≥ 0.99.

    python benchmarks/bench_gallery.py [--size 1000000] [--queries 1000]   (or: make bench-gallery)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import GIB, MIB, peak_rss_bytes, reset_peak_rss, rss_bytes, write_results

from sigverify.verification.search import EXACT_SEARCH_MAX_REFERENCES, ReferenceIndex

EMBEDDING_DIM = 256
REFERENCES_PER_WRITER = 10
TOP_WRITERS = 5
TARGET_P50_MS, TARGET_RECALL_AT_1 = 10.0, 0.99
EXACT_SIZES = (1_000, 10_000, 30_000, 50_000, 100_000, 300_000, 1_000_000)
# Exact search reads the whole gallery per query: 200 queries up to 10⁵ references, fewer beyond (about 60 ms each).
EXACT_QUERIES_SMALL, EXACT_QUERIES_LARGE = 200, 30


def synthetic_gallery(size: int, queries: int, noise: float, spectrum_decay: float, seed: int = 0):
    """(references size×256, writer of each reference, queries, writer of each query), float32 unit rows."""
    rng = np.random.default_rng(seed)
    writers = size // REFERENCES_PER_WRITER
    scale = np.arange(1, EMBEDDING_DIM + 1, dtype=np.float32) ** np.float32(-spectrum_decay / 2)
    centres = rng.standard_normal((writers, EMBEDDING_DIM), dtype=np.float32) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise_scale = np.float32(noise / np.sqrt(EMBEDDING_DIM))

    def samples(of_writers):
        rows = centres[of_writers] + noise_scale * rng.standard_normal((len(of_writers), EMBEDDING_DIM),
                                                                       dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    reference_writers = np.repeat(np.arange(writers), REFERENCES_PER_WRITER)
    references = np.empty((len(reference_writers), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(references), 100_000):  # in blocks: no second gallery-sized array
        references[start:start + 100_000] = samples(reference_writers[start:start + 100_000])
    query_writers = rng.integers(0, writers, queries)
    return references, reference_writers, samples(query_writers), query_writers


def latencies_ms(index: ReferenceIndex, queries: np.ndarray, k: int) -> list[float]:
    """Milliseconds of each query searched alone (after one warm-up search)."""
    index.search(queries[:1], k)
    times = []
    for row in range(len(queries)):
        begin = time.perf_counter()
        index.search(queries[row:row + 1], k)
        times.append((time.perf_counter() - begin) * 1000)
    return times


def percentiles(times_ms: list[float]) -> dict:
    return {"p50_ms": statistics.median(times_ms), "p95_ms": float(np.percentile(times_ms, 95)),
            "queries": len(times_ms)}


def exact_search_latencies(references: np.ndarray, queries: np.ndarray, k: int, full_index: ReferenceIndex) -> list:
    """Exact search's latency over the first n references, for each n of EXACT_SIZES up to the gallery's size."""
    rows = []
    for size in sorted({n for n in EXACT_SIZES if n < len(references)} | {len(references)}):
        index = full_index if size == len(references) else ReferenceIndex.build(references[:size], "cosine",
                                                                                exact_max=size)
        count = EXACT_QUERIES_SMALL if size <= 100_000 else EXACT_QUERIES_LARGE
        rows.append({"search": "exact", "references": size, **percentiles(latencies_ms(index, queries[:count], k))})
        print(f"exact  N={size:>9,}  p50 {rows[-1]['p50_ms']:8.2f} ms  p95 {rows[-1]['p95_ms']:8.2f} ms", flush=True)
    return rows


def faiss_index_figures(references: np.ndarray, queries: np.ndarray, k: int) -> tuple[ReferenceIndex, dict]:
    """The FAISS index over every reference (built whatever the size), with its build, memory and latency figures."""
    reset_peak_rss()
    resident_before = rss_bytes()
    begin = time.perf_counter()
    index = ReferenceIndex.build(references, "cosine", exact_max=0)
    build_seconds = time.perf_counter() - begin
    peak_growth = peak_rss_bytes() - resident_before
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gallery.faiss"
        begin = time.perf_counter()
        index.save(path)
        save_seconds = time.perf_counter() - begin
        index_bytes = path.stat().st_size
        begin = time.perf_counter()
        loaded = ReferenceIndex.load(path, "cosine")
        load_seconds = time.perf_counter() - begin
    assert loaded.kind == index.kind and loaded.size == index.size
    del loaded
    row = {"search": index.kind, "references": index.size, "build_seconds": build_seconds, "index_bytes": index_bytes,
           "peak_rss_growth_bytes": peak_growth, "save_seconds": save_seconds, "load_seconds": load_seconds,
           **percentiles(latencies_ms(index, queries, k))}
    print(f"{index.kind}  N={index.size:,}  build {build_seconds:.1f} s  {index_bytes / GIB:.2f} GiB  "
          f"(peak RSS +{peak_growth / GIB:.2f} GiB)  p50 {row['p50_ms']:.2f} ms  p95 {row['p95_ms']:.2f} ms", flush=True)
    return index, row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="references in the gallery (default 10⁶)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for the FAISS index's latency and recall")
    parser.add_argument("--noise", type=float, default=1.1, help="norm of a sample's noise around its writer's centre")
    parser.add_argument("--spectrum-decay", type=float, default=1.25,
                        help="variance of a centre's coordinate i ∝ i^-decay (0: isotropic)")
    parser.add_argument("--full", action="store_true",
                        help="accepted as `make bench BENCH_ARGS=--full` passes it; the default is the full gallery")
    args = parser.parse_args()
    k = TOP_WRITERS * REFERENCES_PER_WRITER

    begin = time.perf_counter()
    references, reference_writers, queries, query_writers = synthetic_gallery(args.size, args.queries, args.noise,
                                                                              args.spectrum_decay)
    print(f"gallery of {len(references):,} references × {EMBEDDING_DIM} in {time.perf_counter() - begin:.1f} s",
          flush=True)
    exact_index = ReferenceIndex.build(references, "cosine", exact_max=len(references))
    _, exact_positions = exact_index.search(queries, 1)
    exact_top1 = exact_positions[:, 0]
    rows = exact_search_latencies(references, queries, k, exact_index)
    del exact_index

    index, faiss_row = faiss_index_figures(references, queries, k)
    _, faiss_positions = index.search(queries, k)
    faiss_top1 = faiss_positions[:, 0]
    faiss_row.update({"recall_at_1": float(np.mean(faiss_top1 == exact_top1)),
                      "writer_agreement_at_1": float(np.mean(reference_writers[faiss_top1]
                                                             == reference_writers[exact_top1]))})
    rows.append(faiss_row)

    exact_rows = [row for row in rows if row["search"] == "exact"]
    exact_at_full = exact_rows[-1]
    no_slower = [row["references"] for row in exact_rows if row["p50_ms"] <= faiss_row["p50_ms"]]
    under_target = [row["references"] for row in exact_rows if row["p50_ms"] < TARGET_P50_MS]
    summary = {"index": faiss_row["search"], "references": len(references),
               "build_seconds": faiss_row["build_seconds"], "index_mib": faiss_row["index_bytes"] / MIB,
               "peak_rss_growth_mib": faiss_row["peak_rss_growth_bytes"] / MIB,
               "p50_ms": faiss_row["p50_ms"], "p95_ms": faiss_row["p95_ms"],
               "recall_at_1": faiss_row["recall_at_1"], "writer_agreement_at_1": faiss_row["writer_agreement_at_1"],
               "exact_top1_is_query_writer": float(np.mean(reference_writers[exact_top1] == query_writers)),
               "exact_p50_ms_by_references": {row["references"]: row["p50_ms"] for row in exact_rows},
               "exact_p50_under_target_up_to": max(under_target, default=None),
               "exact_p50_no_slower_than_index_up_to": max(no_slower, default=None),
               "exact_search_max_references": EXACT_SEARCH_MAX_REFERENCES,
               "targets_met": faiss_row["p50_ms"] < TARGET_P50_MS and faiss_row["recall_at_1"] >= TARGET_RECALL_AT_1}
    ratio_line = (f"ratio: exact / {faiss_row['search']} p50 at N={len(references):,}: "
                  f"{exact_at_full['p50_ms'] / faiss_row['p50_ms']:.0f}x ({exact_at_full['p50_ms']:.1f} vs "
                  f"{faiss_row['p50_ms']:.2f} ms, p95 {faiss_row['p95_ms']:.2f} ms), recall@1 "
                  f"{faiss_row['recall_at_1']:.3f} (writer {faiss_row['writer_agreement_at_1']:.3f}); build "
                  f"{faiss_row['build_seconds']:.0f} s, {faiss_row['index_bytes'] / GIB:.2f} GiB; exact p50 under "
                  f"{TARGET_P50_MS:g} ms up to N={summary['exact_p50_under_target_up_to']}, no slower than the index up "
                  f"to N={summary['exact_p50_no_slower_than_index_up_to']} "
                  f"(EXACT_SEARCH_MAX_REFERENCES={EXACT_SEARCH_MAX_REFERENCES:,})")
    write_results("gallery", {"size": len(references), "embedding_dim": EMBEDDING_DIM, "metric": "cosine",
                              "references_per_writer": REFERENCES_PER_WRITER, "noise": args.noise,
                              "spectrum_decay": args.spectrum_decay, "queries": args.queries, "k": k,
                              "measured": ("one query at a time, p50/p95 ms (k = 50); recall@1 against exact search "
                                           "on all queries; index bytes = file written by save; peak RSS growth "
                                           "during the build")},
                  rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
