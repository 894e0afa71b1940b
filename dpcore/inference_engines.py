"""Which runtime executes profile's network: TensorFlow or OpenVINO (``dpbeam profile --inference-engine``).

Both run the same frozen graph (``dpcore.models.frozen_concrete_function``: the Keras model traced, weights
as constants), in float32, so they give the same features to float32 rounding
(tests/test_inference_engines.py: within 1e-5 of the largest feature for every model of the zoo). On a CPU,
OpenVINO's CPU plugin runs it 1.4-1.8x faster than TensorFlow at batch 32 (``bench/bench_model.py``,
EfficientNet-B0 cut at ``block6a_activation``, 2 cores, 2026-12-02: 903 against 513 cells/s; Keras'
``predict_on_batch`` 451) and faster still in its parts of 8 (``OPENVINO_CPU_PART``). On GPUs, and for
``--xla`` or ``--precision`` other than float32 (TensorFlow's options), TensorFlow runs it.

- ``auto`` (default): OpenVINO where the worker sees no GPU and the run is float32 without XLA, else
  TensorFlow. Decided on each worker when it loads the model: the launcher cannot see a remote worker's GPUs.
  A network OpenVINO cannot read or compile runs on TensorFlow, with a warning.
- ``tensorflow``: TensorFlow's frozen graph (``dpcore.models.predict_function``).
- ``openvino``: OpenVINO on the CPU, also on a machine with a GPU; refused with ``--xla`` or reduced precision,
  and an error if OpenVINO cannot run the network.

OpenVINO's settings, and why:

- ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bfloat16 units (AVX512-BF16 or AMX, as this project's
  machine) OpenVINO computes in bfloat16 unless told otherwise, which moves features in the third digit.
- Streams (``CpuShare``): a process whose model is called by one thread at a time gets one stream of all
  its threads (``PERFORMANCE_HINT=LATENCY``); one called by N local threads (the DirectRunner's default of a
  thread per core) gets N streams (``THROUGHPUT``). On the model alone (2 cores) the two are alike: one
  stream 869-903 cells/s, two streams called by two threads 831-847; two separate one-thread models called
  side by side only 556.
- Requests (``RequestPool``): every stream has two infer requests, shared by the calling threads, and a
  call's parts run on all the free ones at once. A thread's call takes the other stream too while the other
  thread cuts cells or writes Parquet, and a thread left alone at the end of a stage runs on every core
  (the local runner splits a stage's sites between its threads up front: with a stream per thread, one
  thread ended ~1 s before the other on the 4-plate benchmark). The second request per stream waits in
  OpenVINO's queue, so a stream starts its next part without waiting for a Python thread.
- ``ENABLE_CPU_PINNING=NO``: each process would pin its threads to the same first cores, so several worker
  processes on one machine (local multi-processing, Dataflow's one process per core) would share them.
- No usage reports to Intel (``load_openvino``): ``import openvino`` imports its model converter, which
  sends an "import" event to Google Analytics through ``openvino_telemetry`` on every import (in a child
  process, unless the user opted out with ``opt_in_out`` or ``CI=true`` is set), and ``convert_model``
  more. The converter falls back to a stub of its own where ``openvino_telemetry`` cannot be imported,
  so it is made unimportable in this process before OpenVINO loads. The graph goes through OpenVINO's
  TensorFlow front end, not ``convert_model``, in any case.

``import dpcore.inference_engines`` loads neither TensorFlow nor OpenVINO; building a predictor does.
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dpcore.acceleration import Acceleration

logger = logging.getLogger(__name__)

ENGINES = ("auto", "tensorflow", "openvino")
# OpenVINO on a CPU runs each call's crops this many at a time, whatever the call's size (profile.batch_size):
# a small part's activations stay in the cores' caches. EfficientNet-B0 to block6a_activation, box 128, 2 cores
# (2026-12-02): one stream 1,014 / 1,083 / 1,072 / 1,093 / 1,051 / 955 cells/s at parts of 1 / 2 / 4 / 8 / 16 /
# 32; two streams called by two threads 1,111 at 8 against 803 at 32. TensorFlow is the other way round (483
# at 8, 613 at 32) and keeps the call's size. Features do not depend on it (tests/test_inference_engines.py).
OPENVINO_CPU_PART = 8
# Infer requests per stream: one running, one waiting in OpenVINO's queue, so a stream that finishes a part
# starts the next at once instead of waiting for a Python thread (and the GIL) to hand it one. 4-plate
# profile, 2 cores (2026-12-02): work window 7.4-8.8 s with 1, 6.8-7.1 with 2, 6.5-7.1 with 3 or 4.
REQUESTS_PER_STREAM = 2
OPENVINO_CPU_SETTINGS = {
    "INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY",
    "ENABLE_CPU_PINNING": "NO",
}


class EngineError(ValueError):
    """An engine that does not exist, or one that cannot run the requested options."""


def _tensorflow_only(acceleration: Acceleration) -> bool:
    """XLA and reduced precision are TensorFlow's: OpenVINO runs the network as float32 here."""
    return acceleration.xla or acceleration.mixed


def check_engine(engine: str, acceleration: Acceleration) -> None:
    """Fail before the pipeline for a choice no worker could honour."""
    if engine not in ENGINES:
        raise EngineError(f"--inference-engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "openvino" and _tensorflow_only(acceleration):
        raise EngineError(f"--inference-engine openvino runs the network in float32 on the CPU; {acceleration.describe()} "
                          f"are TensorFlow's options: use --inference-engine tensorflow (or auto, which picks it for them)")


def resolve_engine(engine: str, acceleration: Acceleration) -> str:
    """``auto`` -> the engine this worker should use; an explicit choice is kept."""
    check_engine(engine, acceleration)
    if engine != "auto":
        return engine
    if _tensorflow_only(acceleration):
        return "tensorflow"
    from dpcore.tensorflow_runtime import load_tensorflow  # noqa: PLC0415

    if load_tensorflow().config.list_physical_devices("GPU"):
        return "tensorflow"
    return "openvino"


@dataclass(frozen=True)
class CpuShare:
    """How one worker process's model calls use the CPU: ``streams`` calls at once (one per thread of the
    process that calls the model), sharing ``threads`` threads (None: all the process's cores)."""

    threads: int | None = None
    streams: int = 1


WHOLE_PROCESS = CpuShare()  # one call at a time, on all the process's cores
DEFAULT_ACCELERATION = Acceleration()  # float32, no XLA


@dataclass(frozen=True)
class Predictor:
    """A compiled feature model: ``predictor(crops)`` -> float32 (N, D), safe to call from several threads."""

    engine: str
    description: str
    call: Callable[[np.ndarray], np.ndarray]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.call(batch)


def predictor(model: Any, batch_size: int, engine: str = "auto",
              acceleration: Acceleration = DEFAULT_ACCELERATION, share: CpuShare = WHOLE_PROCESS) -> Predictor:
    """The Keras ``model`` compiled for calls of any number of crops, run ``batch_size`` at a time.

    ``share`` applies to OpenVINO; TensorFlow takes its threads per call from ``TF_NUM_INTRAOP_THREADS``
    (``dpcore.tensorflow_runtime.cores_shared``).
    """
    chosen = resolve_engine(engine, acceleration)
    built = None
    if chosen == "openvino":
        try:
            built = openvino_predictor(model, batch_size, share)
        except Exception as error:  # noqa: BLE001 -- any converter or compiler failure
            if engine != "auto":
                raise EngineError(f"OpenVINO cannot run this network ({type(error).__name__}: {error}); "
                                  f"use --inference-engine tensorflow") from error
            # auto promised the fastest engine that works: a network OpenVINO's front end cannot read (an op
            # it lacks, in a model of the future) still runs, on TensorFlow, and the log says why.
            logger.warning("OpenVINO cannot run this network (%s: %s); it runs on TensorFlow instead",
                           type(error).__name__, error)
    if built is None:
        from dpcore import models  # noqa: PLC0415

        built = Predictor("tensorflow", f"TensorFlow frozen graph ({acceleration.describe()})",
                          models.predict_function(model, batch_size, xla=acceleration.xla))
    logger.info("profile's network runs on %s (engine %s)", built.description, engine)
    return built


def load_openvino():
    """``import openvino`` without its usage telemetry (see the module's notes).

    A ``None`` in ``sys.modules`` makes ``import openvino_telemetry`` raise ImportError, and every place
    OpenVINO imports it from (``openvino.tools.ovc``) then uses its no-op ``telemetry_stub``. Set only while
    nothing in this process has loaded either module: an importer that came first keeps what it chose.
    """
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    import openvino  # noqa: PLC0415

    return openvino


def openvino_predictor(model: Any, batch_size: int, share: CpuShare = WHOLE_PROCESS) -> Predictor:
    """The Keras ``model`` frozen, read by OpenVINO's TensorFlow front end and compiled for the CPU, for
    parts of ``OPENVINO_CPU_PART`` crops (fewer if ``batch_size`` is smaller)."""
    openvino = load_openvino()
    from openvino.frontend import FrontEndManager  # noqa: PLC0415

    from dpcore import models  # noqa: PLC0415

    part = min(batch_size, OPENVINO_CPU_PART)
    shape = (part,) + tuple(model.input.shape[1:])
    graph = models.frozen_concrete_function(model, shape).graph.as_graph_def()
    settings = dict(OPENVINO_CPU_SETTINGS)
    if share.threads:
        settings["INFERENCE_NUM_THREADS"] = str(share.threads)
    if share.streams > 1:  # each calling thread gets a stream of its own, with its part of the threads
        settings.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=str(share.streams))
    with tempfile.TemporaryDirectory(prefix="dpbeam-openvino-") as folder:
        # The front end reads a GraphDef from a file; it is compiled before the folder goes.
        graph_file = Path(folder) / "frozen_graph.pb"
        graph_file.write_bytes(graph.SerializeToString())
        front_end = FrontEndManager().load_by_framework("tf")
        network = front_end.convert(front_end.load(str(graph_file)))
        compiled = openvino.Core().compile_model(network, "CPU", settings)
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    pool = RequestPool([compiled.create_infer_request() for _ in range(REQUESTS_PER_STREAM * streams)])

    used = (compiled.get_property("INFERENCE_NUM_THREADS"), compiled.get_property("NUM_STREAMS"))
    return Predictor("openvino", f"OpenVINO {openvino.get_version()} on the CPU (float32, {used[0]} threads, "
                                 f"{used[1]} stream(s), {part} crops at a time)",
                     lambda batch: pool.run(models.padded_parts(batch, part), len(batch)))


class RequestPool:
    """OpenVINO infer requests (``REQUESTS_PER_STREAM`` per stream) shared by the threads that call the model.

    A call's parts run on every request free when they are started, not one after another on one: when the
    other local thread is cutting cells, reading or writing instead of calling the model, this call's parts
    take its stream too. So the cores stay busy with whichever thread has crops to run, and a thread left
    alone at the end of a stage (the local runner splits a stage's sites between its threads up front) runs
    on all of them. A call never waits for a request while it holds one that has not been collected, so
    calls from several threads cannot wait on each other in a circle.

    Parts are copied into each request's own input memory (``share_inputs=False``), never lent to it. With
    shared inputs (2026-12-02, OpenVINO 2026.4), one 4-plate profile run in about a hundred hung at its first
    calls: both model-calling threads stopped inside ``start_async`` (reading the request's input tensor)
    waiting on a lock, with every core idle. A shared input keeps the numpy array alive from OpenVINO's
    side, and letting it go takes the GIL in whatever thread OpenVINO drops it, possibly one of its own
    while it holds the request's state; a copy leaves no Python object in OpenVINO's hands. The copy costs
    ~0.3 ms per part of 8 crops (2.6 MB), ~1% of a cell's CPU time.
    """

    def __init__(self, requests: list):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for request in requests:
            self._free.put(request)

    def run(self, parts: list[np.ndarray], rows: int) -> np.ndarray:
        """The outputs of ``parts`` (equal-sized), concatenated and cut to the first ``rows``."""
        if not parts:
            return np.zeros((0,), np.float32)
        outputs: list[np.ndarray | None] = [None] * len(parts)
        running: collections.deque = collections.deque()  # (request, part index), oldest first
        try:
            for index, part in enumerate(parts):
                request = self._free_request(running, outputs)
                running.append((request, index))
                request.start_async({0: part}, share_inputs=False)  # copied: see the class's docstring
            while running:
                self._collect(running, outputs)
        finally:
            for request, _ in running:  # after a failure: the requests go back, finished
                try:
                    request.wait()
                except Exception:  # noqa: BLE001 -- the first failure is the one raised
                    pass
                self._free.put(request)
        return (outputs[0] if len(outputs) == 1 else np.concatenate(outputs))[:rows]

    def _free_request(self, running: collections.deque, outputs: list):
        while True:
            try:
                return self._free.get_nowait()
            except queue.Empty:
                if not running:
                    return self._free.get()
                self._collect(running, outputs)  # gives a request back; another thread may take it first

    def _collect(self, running: collections.deque, outputs: list) -> None:
        request, index = running.popleft()
        try:
            request.wait()
            outputs[index] = request.get_output_tensor(0).data.copy()  # the request's memory is reused
        finally:
            self._free.put(request)
