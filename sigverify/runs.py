"""Run folders: `RUNS/<experiment>/<timestamp>-<id>/`, every file written under a temporary name and renamed into place,
a status that says whether the run finished, and `latest` switched only when it has.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from pathlib import Path

import yaml

from sigverify.errors import ConfigError

STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"


def atomic_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp{final.suffix}")


@contextlib.contextmanager
def writing(final: Path):
    """Yields a temporary path beside `final`; renamed onto `final` only if the block succeeds."""
    final = Path(final)
    temporary = atomic_path(final)
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(final: Path, text: str) -> None:
    with writing(final) as temporary:
        temporary.write_text(text)


def write_json(final: Path, data) -> None:
    write_text(final, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_yaml(final: Path, data) -> None:
    write_text(final, yaml.safe_dump(json.loads(json.dumps(data, default=_jsonable)), sort_keys=False))


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


class RunFolder:
    def __init__(self, path: Path, experiment: str, parent: RunFolder | None = None):
        self.path = Path(path)
        self.experiment = experiment
        self.parent = parent  # set for a sub-run (see `child`)

    @classmethod
    def create(cls, runs_root: str | os.PathLike, experiment: str) -> RunFolder:
        parent = Path(runs_root) / experiment
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = parent / f"{stamp}-{secrets.token_hex(3)}"
            try:
                path.mkdir()  # never reuses a folder: mkdir fails if another run took the name
                break
            except FileExistsError:
                continue
        run = cls(path, experiment)
        run.set_status("running")
        return run

    @classmethod
    def resume(cls, path: str | os.PathLike, experiment: str) -> RunFolder:
        run = cls(check_resumable(path, experiment), experiment)
        run.set_status("running")
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def set_status(self, status: str, message: str | None = None) -> None:
        record = {"status": status, "updated": dt.datetime.now().isoformat(timespec="seconds")}
        if message:
            record["message"] = message
        write_json(self.file(STATUS_FILE), record)

    def child(self, name: str) -> RunFolder:
        """The sub-run `name` of this run (one model of a comparison, say): the folder `name` inside this one, created if
        needed, with its own files and status. Finishing a sub-run does not move `latest`."""
        path = self.path / name
        path.mkdir(exist_ok=True)
        return RunFolder(path, self.experiment, parent=self)

    def is_complete(self) -> bool:
        return read_status(self.path).get("status") == "complete"

    @contextlib.contextmanager
    def running(self):
        """Status "running" inside the block and `finish()` after it; "interrupted" (Ctrl-C, SIGTERM) or "failed" when
        it raises. For sub-runs: the top-level run's status is kept by `sigverify.experiment.run_experiment`."""
        self.set_status("running")
        try:
            yield self
        except Exception as error:
            self.set_status("failed", f"{type(error).__name__}: {error}")
            raise
        except BaseException as error:
            self.set_status("interrupted", f"stopped by {error or type(error).__name__}")
            raise
        self.finish()

    def finish(self) -> None:
        """Mark the run complete and, for a top-level run, point `latest` at it (an atomic symlink swap)."""
        self.set_status("complete")
        if self.parent is not None:
            return
        latest = self.path.parent / "latest"
        temporary = self.path.parent / f".latest.{os.getpid()}.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(self.path.name, temporary)
        os.replace(temporary, latest)


def check_resumable(path: str | os.PathLike, experiment: str) -> Path:
    """The folder of an unfinished run of this experiment, or a ConfigError saying why it cannot be resumed."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise ConfigError(f"--resume {path}: not a run folder (no {CONFIG_FILE}); expected a folder under RUNS/{experiment}/")
    recorded = (yaml.safe_load(config_file.read_text()) or {}).get("experiment")
    if recorded != experiment:
        raise ConfigError(f"--resume {path}: that run belongs to the {recorded!r} experiment, not {experiment!r}")
    if read_status(path).get("status") == "complete":
        raise ConfigError(f"--resume {path}: that run has already finished; start a new run instead")
    return path


def read_status(path: str | os.PathLike) -> dict:
    status_file = Path(path) / STATUS_FILE
    return json.loads(status_file.read_text()) if status_file.exists() else {}
