"""A DoFn that fetches the next elements of its bundle while it works on the current one.

Beam hands a DoFn one element at a time, so a stage that reads a site from a bucket and then computes on
it idles through every request's latency. :class:`ReadAheadDoFn` splits such a stage in two: ``fetch``
(the I/O, run up to ``READ_AHEAD`` elements ahead in background threads, see :mod:`dpcore.read_ahead`)
and ``emit`` (the computation and the outputs, in the DoFn's own thread, where Beam's metrics and outputs
belong). Outputs keep the bundle's order. Elements whose data is local are fetched in turn.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from dpcore.read_ahead import ReadAhead

from beam_pipelines.process_exit import skip_final_collection


class ReadAheadDoFn(beam.DoFn):
    """Subclasses define ``fetch``, ``emit`` and ``reads_ahead``, and call :meth:`read_ahead` from
    ``process`` with the element and its side inputs (Beam inspects ``process``' own signature, so each
    subclass keeps its own)."""

    # Sites held per DoFn instance: the one being worked on plus READ_AHEAD fetched or in flight.
    READ_AHEAD = 4

    def fetch(self, element: Any, *side_inputs: Any) -> Any:
        """The element's I/O; runs in a background thread (thread-safe, no Beam calls)."""
        raise NotImplementedError

    def emit(self, element: Any, fetched: Future, *side_inputs: Any) -> Iterator:
        """The element's outputs; ``fetched.result()`` gives ``fetch``'s value or raises its exception."""
        raise NotImplementedError

    def reads_ahead(self, element: Any) -> bool:
        """Whether the element's data lies in an object store (else it is fetched in turn)."""
        raise NotImplementedError

    def setup(self) -> None:
        skip_final_collection()
        self._reader = ReadAhead(lambda job: self.fetch(job[0], *job[1]), self.READ_AHEAD,
                                 name=f"dpbeam-{type(self).__name__}")

    def teardown(self) -> None:
        self._reader.close()

    def start_bundle(self) -> None:
        self._reader.discard()  # left over only if the previous bundle failed

    def read_ahead(self, element: Any, *side_inputs: Any) -> Iterator:
        for (due, arguments), fetched in self._reader.put((element, side_inputs), self.reads_ahead(element)):
            yield from self.emit(due, fetched, *arguments)

    def finish_bundle(self) -> Iterator:
        for (due, arguments), fetched in self._reader.drain():
            for output in self.emit(due, fetched, *arguments):  # outside process(): outputs carry a window
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)
