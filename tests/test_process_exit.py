"""Our processes skip Python's final garbage collection at exit (beam_pipelines.process_exit)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from beam_pipelines import process_exit


def test_the_final_collection_is_skipped_once_per_process(monkeypatch):
    registered = []
    monkeypatch.setattr(process_exit, "_registered", False)
    monkeypatch.setattr(process_exit.atexit, "register", registered.append)
    process_exit.skip_final_collection()
    process_exit.skip_final_collection()
    assert registered == [gc.freeze]


def test_a_process_that_skips_it_still_flushes_its_output_and_exits_zero(tmp_path):
    """The freeze runs at exit, before logging's own handler and the interpreter's teardown: what the process
    wrote and logged is there, its exit status is unchanged, and the objects it held were never collected."""
    script = textwrap.dedent(f"""
        import gc, logging, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from beam_pipelines.process_exit import skip_final_collection
        logging.basicConfig(filename={str(tmp_path / 'log.txt')!r}, level=logging.INFO)
        skip_final_collection()

        class Noisy:
            def __del__(self):
                print("collected", flush=True)

        cycle = Noisy(); cycle.me = cycle; del cycle  # only a collection frees a cycle
        gc.disable()
        logging.info("logged before exit")
        print("done", end="")
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "done"  # the cycle's __del__ never ran: no final collection
    assert "logged before exit" in (tmp_path / "log.txt").read_text()
    failing = subprocess.run([sys.executable, "-c", script + "\nraise SystemExit(3)\n"], capture_output=True,
                             text=True, timeout=120)
    assert failing.returncode == 3
