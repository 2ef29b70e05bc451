"""sigverify: deep metric learning for offline handwritten signature verification.

The package follows the pipeline: data → models and losses → training → evaluation → reporting (README, "How the code
is laid out").
"""

__version__ = "0.1.0"

import contextlib as _contextlib
import importlib.util as _importlib_util
import os as _os
import sys as _sys

_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@_contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null inside the block: TensorFlow's C++ start-up lines (absl's "All log messages
    before absl::InitializeLog()", CUDA probing, `E0000 ... cuInit` on a machine without a GPU) bypass Python and
    TF_CPP_MIN_LOG_LEVEL, and bury the one line a user needs. Python's own errors still reach stderr (they are
    printed after the block)."""
    try:
        saved = _os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(devnull, 2)
    try:
        yield
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


def _start_keras() -> None:
    """Import Keras (and TensorFlow with its devices listed, which is when CUDA is probed) quietly, after checking that
    KERAS_BACKEND, where it is set, names a backend that is installed: a one-line error and exit 2 otherwise. Unset, it
    means TensorFlow; on a machine without it nothing is imported here (`python -m sigverify.bench_gpu` then picks JAX
    for its measurements)."""
    backend = _os.environ.get("KERAS_BACKEND")
    module = _BACKEND_MODULES.get(backend or "tensorflow")
    if module is None or _importlib_util.find_spec(module) is None:
        if backend is None:
            return
        installed = [name for name, mod in _BACKEND_MODULES.items() if _importlib_util.find_spec(mod) is not None]
        why = "not a Keras backend" if module is None else f"{module} is not installed"
        _sys.stderr.write(f"error: KERAS_BACKEND={backend}: {why}; expected one of the installed backends: "
                          f"{', '.join(installed)}\n")
        raise SystemExit(2)
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_silenced():
        import keras  # noqa: F401

        if module == "tensorflow":
            import tensorflow

            tensorflow.config.list_physical_devices()  # physical only: logical CPU devices can still be split


_start_keras()
