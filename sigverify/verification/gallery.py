"""A gallery of enrolled writers in one SQLite file (the standard library's driver, WAL mode): writers, their reference
signatures (file name, sha256, embedding) and the identity of the model that embedded them. Every change is one
transaction, so an enrolment that fails or is interrupted adds nothing, and concurrent enrolments wait for each other.

Schema (version 1): meta(key, value): schema_version, run (the run folder), model_sha256, preprocessing, metric,
embedding_dim, revision (bumped by every change; a search index on disk is valid for one revision);
writers(writer TEXT PRIMARY KEY, enrolled); reference_signatures(id, writer, file_name, sha256, embedding float32
blob, enrolled), one row per (writer, sha256).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigverify.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 60  # how long a writer waits for another process's transaction
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE writers (writer TEXT PRIMARY KEY, enrolled TEXT NOT NULL);
CREATE TABLE reference_signatures (
    id INTEGER PRIMARY KEY,
    writer TEXT NOT NULL REFERENCES writers (writer) ON DELETE CASCADE,
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,
    enrolled TEXT NOT NULL,
    UNIQUE (writer, sha256)
);
CREATE INDEX reference_signatures_by_sha256 ON reference_signatures (sha256);
"""


@dataclass(frozen=True)
class Enrolment:
    """What `Gallery.enroll` did: references added per writer, and the files skipped with the reason."""

    added: dict[str, int]
    skipped: list[tuple[str, str]]


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class Gallery:
    """An open gallery file. `Gallery.create` makes one for a run; `Gallery(path)` opens an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"--db {path}: no such gallery; expected a file made by `sigverify gallery create`")
        try:
            self.connection = self._connect(self.path)
            self.meta = dict(self.connection.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"--db {path}: not a sigverify gallery ({error}); expected a file made by "
                              "`sigverify gallery create`") from None
        if self.meta.get("schema_version") != str(SCHEMA_VERSION):
            raise ConfigError(f"--db {path}: gallery schema version {self.meta.get('schema_version')}, expected "
                              f"{SCHEMA_VERSION}")
        self.dim = int(self.meta["embedding_dim"])

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    @classmethod
    def create(cls, path: str | Path, run) -> Gallery:
        """A new, empty gallery for `run` (a TrainedRun), written under a temporary name and renamed into place: an
        existing file is never overwritten."""
        path = Path(path)
        if path.exists():
            raise ConfigError(f"--db {path}: exists; expected a new file name (a gallery is never overwritten)")
        if not path.parent.is_dir():
            raise ConfigError(f"--db {path}: the folder {path.parent} does not exist; expected an existing folder")
        dim = int(run.embed_images(np.full((1, *run.preprocessing.image_size_hw), 255, np.uint8)).shape[1])
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            connection = cls._connect(temporary)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(SCHEMA)
            meta = {"schema_version": SCHEMA_VERSION, "run": str(run.path), "embedding_dim": dim, "revision": 0,
                    "created": _now(), **run.identity}
            with connection:
                connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            connection.close()
            os.link(temporary, path)  # fails if another process created the file meanwhile
        finally:
            for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
                leftover.unlink(missing_ok=True)
        return cls(path)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_model(self, run) -> None:
        """Refuse a run whose model or preprocessing is not the one the gallery's embeddings came from."""
        for key in ("model_sha256", "preprocessing", "metric"):
            if run.identity[key] != self.meta.get(key):
                raise ConfigError(f"--db {self.path}: made with another model ({key} {self.meta.get(key, '?')[:16]}… "
                                  f"of run {self.meta.get('run')}); --run {run.path} has {str(run.identity[key])[:16]}…: "
                                  "expected the run that created the gallery")

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception (Ctrl-C included); bumps the revision."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
            self.connection.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    def enroll(self, references: dict[str, list[tuple[str, str, np.ndarray]]]) -> Enrolment:
        """Add {writer: [(file name, sha256, float32 D embedding), ...]} in one transaction. A file already enrolled for
        that writer (same sha256), or given twice, is skipped and said so; one enrolled for another writer refuses the
        whole enrolment (it would make identification ambiguous)."""
        added, skipped = {}, []
        with self._transaction() as connection:
            for writer, files in references.items():
                connection.execute("INSERT OR IGNORE INTO writers VALUES (?, ?)", (writer, _now()))
                added[writer] = 0
                for file_name, sha256, embedding in files:
                    embedding = np.asarray(embedding, dtype=np.float32).ravel()
                    if embedding.shape != (self.dim,):
                        raise DataError(f"{file_name}: embedding of {embedding.size} values; expected {self.dim}")
                    owners = [row[0] for row in connection.execute(
                        "SELECT writer FROM reference_signatures WHERE sha256 = ?", (sha256,))]
                    if writer in owners:
                        skipped.append((file_name, f"already enrolled for writer {writer}"))
                        continue
                    if owners:
                        raise DataError(f"{file_name}: the same image is enrolled for writer {owners[0]}; expected a "
                                        f"signature of writer {writer} only (nothing was enrolled)")
                    connection.execute("INSERT INTO reference_signatures (writer, file_name, sha256, embedding, "
                                       "enrolled) VALUES (?, ?, ?, ?, ?)",
                                       (writer, file_name, sha256, embedding.tobytes(), _now()))
                    added[writer] += 1
        return Enrolment(added, skipped)

    def remove(self, writer: str) -> int:
        """Remove a writer and their references (one transaction); returns how many references went."""
        with self._transaction() as connection:
            count = connection.execute("SELECT COUNT(*) FROM reference_signatures WHERE writer = ?", (writer,)).fetchone()[0]
            if connection.execute("DELETE FROM writers WHERE writer = ?", (writer,)).rowcount == 0:
                raise ConfigError(f"--writer {writer}: not enrolled in {self.path}")
        return count

    def writers(self) -> list[tuple[str, int, str]]:
        """(writer, number of references, enrolled) of every writer, sorted by writer."""
        return list(self.connection.execute(
            "SELECT w.writer, COUNT(r.id), w.enrolled FROM writers w LEFT JOIN reference_signatures r "
            "ON r.writer = w.writer GROUP BY w.writer ORDER BY w.writer"))

    def references_of(self, writer: str) -> np.ndarray:
        """float32 K×D embeddings of a writer's references; a ConfigError when the writer is not enrolled."""
        rows = self.connection.execute("SELECT embedding FROM reference_signatures WHERE writer = ? ORDER BY id",
                                       (writer,)).fetchall()
        if not rows:
            raise ConfigError(f"--writer {writer}: not enrolled in {self.path} (see `sigverify gallery list --db "
                              f"{self.path}`)")
        return np.stack([np.frombuffer(row[0], dtype=np.float32) for row in rows])

    def all_references(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 N×D embeddings, writer of each row) of the whole gallery, in id order."""
        writers, embeddings = [], np.zeros((self.size(), self.dim), np.float32)
        for position, (writer, blob) in enumerate(self.connection.execute(
                "SELECT writer, embedding FROM reference_signatures ORDER BY id")):
            writers.append(writer)
            embeddings[position] = np.frombuffer(blob, dtype=np.float32)
        return embeddings[: len(writers)], np.asarray(writers, dtype=object)

    def reference_writers(self) -> np.ndarray:
        """The writer of each reference, in id order (the positions of a search index)."""
        return np.asarray([row[0] for row in self.connection.execute(
            "SELECT writer FROM reference_signatures ORDER BY id")], dtype=object)

    def size(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM reference_signatures").fetchone()[0]

    def revision(self) -> int:
        return int(self.connection.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    @contextlib.contextmanager
    def _snapshot(self):
        """One read transaction: what it reads is one state of the gallery, whatever other processes commit."""
        self.connection.execute("BEGIN")
        try:
            yield
        finally:
            self.connection.execute("COMMIT")

    def search_index(self):
        """(ReferenceIndex over every reference, writer of each position): exact search for a small gallery; beyond
        it a FAISS index kept beside the gallery file (`<db>.r<revision>.faiss`), built once per revision of the
        gallery (a damaged file is rebuilt), so that a query reads only the writers column."""
        from sigverify.verification.search import EXACT_SEARCH_MAX_REFERENCES, ReferenceIndex

        metric = self.meta["metric"]
        with self._snapshot():
            size, revision = self.size(), self.revision()
            if size == 0:
                raise ConfigError(f"--db {self.path}: no writer enrolled; enrol some first (`sigverify enroll`)")
            if size <= EXACT_SEARCH_MAX_REFERENCES:
                embeddings, writers = self.all_references()
                return ReferenceIndex.build(embeddings, metric, exact_max=EXACT_SEARCH_MAX_REFERENCES), writers
            index_file = self.path.with_name(f"{self.path.name}.r{revision}.faiss")
            if index_file.exists():
                try:
                    index = ReferenceIndex.load(index_file, metric)
                    if index.size == size:
                        return index, self.reference_writers()
                    log.warning("%s: holds %d references, the gallery %d: rebuilding it", index_file, index.size, size)
                except DataError as error:
                    log.warning("%s: rebuilding the search index", error)
            embeddings, writers = self.all_references()
        index = ReferenceIndex.build(embeddings, metric, exact_max=EXACT_SEARCH_MAX_REFERENCES)
        for stale in self.path.parent.glob(f"{self.path.name}.r*.faiss"):
            stale.unlink(missing_ok=True)
        index.save(index_file)
        return index, writers
