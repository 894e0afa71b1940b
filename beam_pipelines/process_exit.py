"""Our processes end without Python's final garbage collection.

When a Python process ends, the interpreter runs one last full collection over every object still alive
(``Py_FinalizeEx``) before the operating system takes the memory back anyway. A process of ours holds
Beam, pandas, pyarrow and numba, hundreds of thousands of objects, and that collection took 0.4-0.8 s per
process here (py-spy on a worker after its last atexit handler: ``gc_collect_main``). The local runner
stops its worker processes one after the other and waits for each to exit, so a run with two worker
processes spent 1.7-2.2 s between its commit and its exit, 0.24-0.25 s with the collection skipped
(2026-12-03, export-sc on the 1-plate replica, two runs each).

``gc.freeze()`` as an atexit handler moves every object into the permanent generation, which the final
collection leaves alone. Nothing is lost by it: every output here is written and committed (renamed
into place) inside its pipeline step, long before the process ends, and the atexit handlers registered
earlier (logging's flush among them) still run after this one. Objects in reference cycles are then not
finalised at exit, which only matters for a file left open in a cycle; none of ours is.
"""

from __future__ import annotations

import atexit
import gc
import logging

logger = logging.getLogger(__name__)

_registered = False


def skip_final_collection() -> None:
    """Skip the interpreter's last garbage collection when this process exits (once per process).

    Called by the command line (the launcher) and by the set-up of the pipeline steps that run in worker
    processes (reading the index, reading ahead, writing shards), so each worker registers it once.
    """
    global _registered
    if _registered:
        return
    _registered = True
    atexit.register(gc.freeze)
    logger.debug("the final garbage collection is skipped at exit")
