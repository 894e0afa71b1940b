"""Importing TensorFlow once, without the C++ start-up lines it prints on every machine.

TensorFlow 2.20 writes ``oneDNN custom operations are on``, ``Could not find cuda drivers`` and
``All log messages before absl::InitializeLog() ...`` to the process's standard error while it loads,
before ``TF_CPP_MIN_LOG_LEVEL`` applies. On a CPU machine they are not problems, and they drowned a
command's own output (23 of the demo's 106 lines). The CLI sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless
``--log-level DEBUG``; local worker processes inherit it. With that setting this module silences file
descriptor 2 for the length of the import only. Import failures still arrive as Python exceptions (their
message is in the exception), and nothing changes where the variable is not set (e.g. on Dataflow).

It also keeps two libraries Keras 3 loads for features this program never uses out of the import:
scikit-learn (for ``keras.wrappers``' estimators) and ``matplotlib.pyplot`` (for
``keras.visualization``'s image gallery). Keras imports both only if installed and carries on without
them; they are installed here for evaluate and the charts, and cost ~1.4 of ``import tensorflow``'s
~6 CPU-seconds on every TensorFlow process (2026-12-02, 2 cores: 6.3 -> 4.7 s). Both stay importable
afterwards, loaded where they are used.

This module imports nothing heavy itself, so pure ``dpcore`` modules may import it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from types import ModuleType
from typing import Iterator

_import_lock = threading.Lock()


def quiet_requested() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "") == "3"


@contextlib.contextmanager
def _standard_error_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Optional imports of Keras 3 that nothing here uses (see the module's docstring). matplotlib itself stays
# importable during the import (dpcore.charts uses matplotlib.figure, perhaps in another thread); only
# pyplot, which nothing in this program imports, is held back.
KERAS_EXTRAS_HELD_BACK = ("sklearn", "matplotlib.pyplot")


@contextlib.contextmanager
def _keras_extras_held_back() -> Iterator[None]:
    """Within the block ``import sklearn`` and ``import matplotlib.pyplot`` fail as if not installed (a
    None entry in ``sys.modules``), unless loaded already; afterwards they import as usual."""
    held = [name for name in KERAS_EXTRAS_HELD_BACK if name not in sys.modules]
    for name in held:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in held:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def load_tensorflow() -> ModuleType:
    """``import tensorflow`` (with Keras, which it loads), without Keras' unused extras, quietly when
    ``TF_CPP_MIN_LOG_LEVEL=3``; returns the module."""
    with _import_lock:
        if "tensorflow" not in sys.modules:
            quiet = _standard_error_silenced() if quiet_requested() else contextlib.nullcontext()
            with _keras_extras_held_back(), quiet:
                importlib.import_module("tensorflow")
    return importlib.import_module("tensorflow")


INTRA_OP_VARIABLE = "TF_NUM_INTRAOP_THREADS"


@contextlib.contextmanager
def cores_shared(concurrent_calls: int) -> Iterator[int | None]:
    """Within the block, each of ``concurrent_calls`` simultaneous model calls gets its share of the cores.

    TensorFlow sizes one intra-op pool per process from the core count, so N threads each calling
    the model oversubscribe the cores N times. And EfficientNet at batch 32 scales poorly inside
    one call (2 cores give ~1.2x one core here), while two calls of one thread each give ~2x:
    profile on 2 cores went from ~120-155 to ~190-200 cells/s. TensorFlow reads
    ``TF_NUM_INTRAOP_THREADS`` when its runtime starts in a process (local worker processes
    inherit it); a value the user set wins. The variable is restored on leaving, so later
    TensorFlow processes started by the same program (tests, notebooks) are not affected.
    Yields the threads per call requested, or None when left to TensorFlow.
    """
    user_value = os.environ.get(INTRA_OP_VARIABLE)
    if user_value is not None or concurrent_calls <= 1:
        yield int(user_value) if user_value and user_value.isdigit() else None
        return
    per_call = max(1, (os.cpu_count() or 1) // concurrent_calls)
    os.environ[INTRA_OP_VARIABLE] = str(per_call)
    if "tensorflow" in sys.modules:  # loaded already: only applies if its runtime has not started
        try:
            sys.modules["tensorflow"].config.threading.set_intra_op_parallelism_threads(per_call)
        except RuntimeError:
            pass
    try:
        yield per_call
    finally:
        os.environ.pop(INTRA_OP_VARIABLE, None)
