"""Importing TensorFlow once, without the C++ start-up lines it prints on every machine.

TensorFlow 2.20 writes ``oneDNN custom operations are on``, ``Could not find cuda drivers`` and
``All log messages before absl::InitializeLog() ...`` to the process's standard error while it loads,
before ``TF_CPP_MIN_LOG_LEVEL`` applies. On a CPU machine they are not problems, and they drowned a
command's own output (23 of the demo's 106 lines). The CLI sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless
``--log-level DEBUG``; local worker processes inherit it. With that setting this module silences file
descriptor 2 for the length of the import only. Import failures still arrive as Python exceptions (their
message is in the exception), and nothing changes where the variable is not set (e.g. on Dataflow).

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


def load_tensorflow() -> ModuleType:
    """``import tensorflow``, quietly when ``TF_CPP_MIN_LOG_LEVEL=3``; returns the module."""
    with _import_lock:
        if "tensorflow" not in sys.modules and quiet_requested():
            with _standard_error_silenced():
                importlib.import_module("tensorflow")
    return importlib.import_module("tensorflow")
