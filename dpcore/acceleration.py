"""How a network runs on the accelerator: numeric precision and XLA compilation (``--precision``, ``--xla``).

Both are options of the commands, not config keys: they change how fast a model runs, not what it is
(DeepProfiler's config has no such keys), and the right choice depends on the machine a run lands on.

- ``precision``: ``float32`` (default, bit-for-bit what the tests check), ``mixed_float16`` (NVIDIA GPUs
  with tensor cores, compute capability 7.0+; training scales the loss so small float16 gradients do not
  vanish) or ``mixed_bfloat16`` (TPUs, NVIDIA Ampere and newer, recent CPUs with AMX/AVX512-BF16). Keras
  keeps the weights in float32 either way, so checkpoints are the same files; features and probabilities
  are returned as float32. Reduced precision changes features in the third significant digit, so profile
  records the precision in the features' manifest and refuses to add sites made at another precision.
- ``xla``: compile the network with XLA (``jit_compile``). It pays off on GPUs; on a CPU it was ~10x
  slower than the default graph in ``bench/bench_model.py`` (13 vs 145 cells/s), so it stays off unless asked.

This module imports nothing heavy: TensorFlow and Keras load only inside :meth:`Acceleration.building`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

from dpcore.tensorflow_runtime import load_tensorflow

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

# Keras' dtype policy is global to the process; local DirectRunner threads build their models at the same time.
_policy_lock = threading.Lock()


class AccelerationError(ValueError):
    pass


@dataclass(frozen=True)
class Acceleration:
    precision: str = "float32"
    xla: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise AccelerationError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def mixed(self) -> bool:
        return self.precision != "float32"

    @property
    def loss_scaling(self) -> bool:
        """float16's narrow exponent needs the loss scaled in training; bfloat16's does not."""
        return self.precision == "mixed_float16"

    def describe(self) -> str:
        return f"precision {self.precision}, XLA {'on' if self.xla else 'off'}"

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Layers created inside the block compute at this precision (weights stay float32).

        The policy is set even for float32: another thread may be building at another precision."""
        load_tensorflow()  # quietly, before Keras imports it loudly
        import keras  # noqa: PLC0415

        with _policy_lock:
            previous = keras.mixed_precision.dtype_policy()
            keras.mixed_precision.set_dtype_policy(self.precision)
            try:
                yield
            finally:
                keras.mixed_precision.set_dtype_policy(previous)
