"""A Beam coder for numpy arrays whose size estimate costs nothing.

Beam's workers sample the byte size of elements on every collection, also inside a fused stage where
nothing is encoded: the first ten elements of each bundle, then ever fewer
(``apache_beam.runners.worker.opcounters.OutputCounter``). A coder without its own estimate encodes the
element to measure it, and a numpy array's default coder is pickle: profile's site crops (~22 MB a site of
67 cells at box 128, 5 channels, float32) were pickled two or three times per site only to be measured,
0.65 of the ~13 CPU-seconds of the 4-plate benchmark's profile (yappi, 2026-12-02). ``ArrayCoder`` encodes an
array as an ``.npy`` image (numpy's own format: a short header of dtype and shape, then the buffer; no pickle,
object arrays refused) and estimates from ``nbytes``.

Registered for ``np.ndarray`` type hints by ``register()``: a collection typed ``tuple[K, np.ndarray]`` gets a
tuple coder whose array part is this one.
"""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np

# The .npy header before an array's buffer (magic, version, dtype, order, shape, padded to 64 bytes): an estimate.
_HEADER_BYTES = 128


class ArrayCoder(beam.coders.Coder):
    """``np.ndarray`` <-> ``.npy`` bytes; size estimate from ``nbytes``."""

    def encode(self, value: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
        return buffer.getvalue()

    def decode(self, encoded: bytes) -> np.ndarray:
        return np.lib.format.read_array(io.BytesIO(encoded), allow_pickle=False)

    def estimate_size(self, value: np.ndarray) -> int:
        return int(value.nbytes) + _HEADER_BYTES

    def is_deterministic(self) -> bool:
        return False  # equal arrays need not encode to equal bytes (byte order, -0.0): never a shuffle key

    def to_type_hint(self):
        return np.ndarray

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


def register() -> None:
    """Use ``ArrayCoder`` for every collection typed ``np.ndarray`` (or containing one) in this process."""
    beam.coders.registry.register_coder(np.ndarray, ArrayCoder)
