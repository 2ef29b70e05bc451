"""What every benchmark shares: timing a call, peak memory of a code section, the machine's description, an experiment
script's profiles, and writing `benchmarks/results/<name>.json` (or `$BENCH_RESULTS_DIR/<name>.json`, for a trial run
that must leave the committed results alone) with the ratio line that each benchmark prints last."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO = BENCHMARKS_DIR.parent
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR") or BENCHMARKS_DIR / "results")
GIB = 1024**3
MIB = 1024**2

# Every benchmark imports this module first: keep TensorFlow's C++ start-up messages out of the output, and note how
# busy the machine was when the benchmark started.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
LOAD_AVERAGE_AT_START = [round(x, 2) for x in os.getloadavg()]

# The benchmarks measure the experiments' own profiles, loaded as the tests load them (and the tests' oracles).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.conftest import load_recipe as recipe  # noqa: F401  (what the benchmarks import from here)


def median_seconds(call: Callable[[], object], min_repeats: int = 3, min_seconds: float = 1.0,
                   max_repeats: int = 50) -> float:
    """Median wall time of `call()` (already warmed up by the caller): at least `min_repeats` runs and `min_seconds`."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_seconds):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def fastest_and_cpu_seconds(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Of `repeats` calls of `call()` (already warmed up): the shortest wall time (on a shared machine, the call least
    disturbed by other work) and the mean CPU time of this process's threads per call (the work done, whatever the
    machine's load: a busy neighbour lengthens the wall time, not the CPU time)."""
    wall_times, cpu_started = [], time.process_time()
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        wall_times.append(time.perf_counter() - begin)
    return min(wall_times), (time.process_time() - cpu_started) / repeats


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux ≥ 4.0: `5` into /proc/self/clear_refs); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset_peak_rss (or since the start of the process)."""
    peak = _status_kib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak * 1024


def rss_bytes() -> int:
    current = _status_kib("VmRSS")
    return (current or 0) * 1024


def limit_address_space(extra_bytes: int) -> int:
    """Cap this process's virtual memory at what it uses now plus `extra_bytes`: an allocation beyond it fails in this
    process instead of pushing a shared machine into swap or the OOM killer. Returns the limit."""
    in_use = (_status_kib("VmSize") or 0) * 1024
    limit = in_use + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "bfloat16_units": [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "load_average_at_start": LOAD_AVERAGE_AT_START,
        "python": platform.python_version(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import keras
        import tensorflow as tf

        info.update({"tensorflow": tf.__version__, "keras": keras.__version__,
                     "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]})
    except ImportError:
        pass
    return info


def write_results(name: str, settings: dict, rows: list[dict], summary: dict, ratio_line: str) -> Path:
    """benchmarks/results/<name>.json, then the ratio line printed last (as every benchmark ends)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    environment = machine()
    environment["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = RESULTS_DIR / f"{name}.json"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"benchmark": name, "environment": environment, "settings": settings,
                                     "results": rows, "summary": summary, "ratio_line": ratio_line}, indent=2) + "\n")
    os.replace(temporary, path)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    print(ratio_line)
    return path
