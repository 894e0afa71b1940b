"""The ``dpbeam`` command line, a drop-in for DeepProfiler's.

    dpbeam --root ROOT --config NAME.json [--exp EXP] [--metadata index.csv]
           [--single-cells NAME] [--gpu ID] COMMAND [command options] [Beam options]

Global options come before the command (as in DeepProfiler) and are also
accepted after it. Anything the command does not know is handed to Beam as
pipeline options (``--runner``, ``--direct_num_workers``, ``--project`` ...);
commands that run no pipeline refuse such leftovers.

Exit status: 0 success; 1 the command ran but found problems or failed
records (they are listed); 2 the command line or the config is wrong;
130 interrupted (Ctrl-C).

``DPBEAM_COMMAND_LOG=FOLDER`` appends every finished command line and its exit status to
``FOLDER/<pid>.jsonl``: the test suite sets it to prove that every command line the README shows
was run by some test (tests/readme_commands.py).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from dpcore import __version__
from dpcore.config import ConfigError
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locking import LockedError
from dpcore.metadata import MetadataError
from dpcore.reachability import check_reachable
from dpcore.storage import StoragePath

from beam_pipelines import commands
from beam_pipelines.context import CommandContext, UsageError, local_parallelism
from beam_pipelines.process_exit import skip_final_collection

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, what shells report for Ctrl-C

_GLOBAL_HELP = {
    "--root": "project root folder or gs:// URI (DeepProfiler layout); default: the current folder",
    "--config": "config file name inside ROOT/inputs/config/, or a full path or gs:// URI",
    "--exp": "experiment name: outputs go to ROOT/outputs/EXP/ (default: results)",
    "--metadata": "index file name inside ROOT/inputs/metadata/ (default: index.csv)",
    "--single-cells": "folder name under ROOT/outputs/ for exported single cells (default: single-cells)",
    "--gpu": "GPU device id(s) to use for train/profile, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES)",
    "--log-level": "logging level: DEBUG, INFO, WARNING, ERROR (default: INFO)",
    "--cores": "CPU cores to use locally (DeepProfiler's flag; 0 = all): local worker threads of the pipeline "
               "commands, TensorFlow threads of train (default: 0)",
}
_GLOBAL_TYPES = {"--cores": int}
_GLOBAL_DEFAULTS = {"--root": ".", "--config": None, "--exp": "results", "--metadata": "index.csv",
                    "--single-cells": "single-cells", "--gpu": None, "--log-level": "INFO",
                    "--cores": 0}


def _add_global_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    for flag, text in _GLOBAL_HELP.items():
        default = _GLOBAL_DEFAULTS[flag] if with_defaults else argparse.SUPPRESS
        parser.add_argument(flag, default=default, type=_GLOBAL_TYPES.get(flag, str),
                            help=text if with_defaults else argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpbeam",
        description="DeepProfiler's commands as distributed dataflow: illumination correction, single-cell "
                    "export, training and profiling of Cell Painting screens on any Beam runner.",
        epilog="Beam pipeline options (--runner, --direct_num_workers, --project, --region, --temp_location, "
               "...) may follow the command. Run 'dpbeam COMMAND --help' for a command's own options.",
    )
    parser.add_argument("--version", action="version", version=f"dpbeam {__version__}")
    _add_global_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in commands.COMMANDS:
        child = sub.add_parser(spec.name, help=spec.help, description=spec.description, aliases=spec.aliases,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_global_options(child, with_defaults=False)
        spec.add_arguments(child)
    return parser


class _KnownNoise(logging.Filter):
    """Drops lines Beam prints on every local run that are not problems (shown with --log-level DEBUG).

    Local worker processes warn that they have no semi-persistent directory, that they ignore the
    DirectRunner's own options, and that memory cannot be measured; the launcher notes the default
    runner; Beam's text sink announces that it replaces a dead-letter file of an earlier run; AutoGraph
    says it runs an import helper as it is. Each is expected; together they were a fifth of the demo's
    output.
    """

    PHRASES = (
        "No semi_persistent_directory found",
        "Discarding unparseable args",
        "Resource module is not available",
        "Missing pipeline option (runner)",
        "existing files in target path matching",  # a dead-letter file replaced by this run's
        "AutoGraph could not transform <function _gcd_import",  # tf.data meeting Python's import machinery
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(phrase in message for phrase in self.PHRASES)


def _configure_logging(level_name: str) -> None:
    level = getattr(logging, str(level_name).upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {level_name!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if level > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_KnownNoise())
    # TensorFlow and Beam are chatty at INFO; keep their warnings.
    for noisy in ("absl", "tensorflow", "apache_beam"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if level > logging.DEBUG:
        # TensorFlow's C++ start-up lines on a machine without a GPU (cudart_stub, cpu_feature_guard, an
        # ERROR-level "failed call to cuInit (303)") are not problems: shown only at DEBUG. Real failures
        # still arrive as Python exceptions. Set before TensorFlow loads; worker processes inherit it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _emit(text: str) -> None:
    """Write a command's human summary to standard output."""
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None, *, emit: Callable[[str], None] = _emit) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    skip_final_collection()
    code = _run(arguments, emit)
    _log_command_line(arguments, code)
    return code


def _log_command_line(arguments: list[str], code: int) -> None:
    """Append the command line and its exit status to ``$DPBEAM_COMMAND_LOG/<pid>.jsonl`` when set."""
    folder = os.environ.get("DPBEAM_COMMAND_LOG")
    if not folder:
        return
    line = json.dumps({"argv": arguments, "exit": code}) + "\n"
    try:  # the command's outcome stands whatever happens to its log line
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as log:
            log.write(line)
    except OSError as error:
        logger.warning("DPBEAM_COMMAND_LOG: could not record the command line: %s", error)


def _run(arguments: list[str], emit: Callable[[str], None]) -> int:
    parser = build_parser()
    args, leftovers = parser.parse_known_args(arguments)
    spec = commands.BY_NAME[args.command]
    try:
        _configure_logging(args.log_level)
        if leftovers and not spec.uses_beam:
            raise UsageError(f"unrecognised argument(s) for {spec.name!r}: {' '.join(leftovers)} "
                             f"(this command runs no Beam pipeline)")
        if getattr(args, "detach", False):
            # Refuse a detach that would lose the job before anything is read or written.
            from apache_beam.options.pipeline_options import PipelineOptions

            from beam_pipelines.running import engine_handoff
            engine_handoff(PipelineOptions(list(leftovers)), spec.name)
        layout = ProjectLayout.create(args.root, experiment=args.exp, single_cells=args.single_cells,
                                      metadata_file=args.metadata)
        check_reachable(layout.root)  # seconds, not a minute of retries, when a bucket is out of reach
        if args.config and "://" in args.config:
            check_reachable(StoragePath(args.config))
        if args.cores < 0:
            raise UsageError(f"--cores must be 0 (all) or a number of cores, got {args.cores}")
        beam_args = local_parallelism(leftovers, args.cores, spec.local_threads) if spec.uses_beam else tuple(leftovers)
        context = CommandContext(layout=layout, config_name=args.config, gpu=args.gpu,
                                 beam_args=beam_args, cores=args.cores,
                                 own_beam_args=tuple(leftovers) if spec.uses_beam and spec.local_threads else None)
        return spec.run(context, args, emit)
    except (UsageError, ConfigError, MetadataError, UnsafePathError, ValueError) as error:
        logger.debug("dpbeam %s stopped", spec.name, exc_info=True)  # --log-level DEBUG shows where
        emit(f"dpbeam {spec.name}: error: {error}")
        return EXIT_USAGE
    except LockedError as error:
        emit(f"dpbeam {spec.name}: refused: {error}")
        return EXIT_USAGE
    except (FileNotFoundError, PermissionError) as error:
        emit(f"dpbeam {spec.name}: error: {error}")
        return EXIT_USAGE


class _Interruption:
    """Ctrl-C, recorded when it happens: whatever a runner turns it into afterwards (a dead SDK worker, a
    cancelled job, a chained RuntimeError), the command was interrupted, not broken."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.event.is_set():
            os._exit(EXIT_INTERRUPTED)  # a second Ctrl-C: leave at once
        self.event.set()
        self._silence()  # the runner logs the KeyboardInterrupt with a traceback while it unwinds
        raise KeyboardInterrupt

    @staticmethod
    def _silence() -> None:
        logging.disable(logging.CRITICAL)
        sys.stderr.flush()
        sys.stderr = open(os.devnull, "w")  # threads still unwinding must not print over the message

    def leave(self, command: str) -> None:
        """One line instead of the runner's tracebacks; then exit 130 without waiting for its threads."""
        self._silence()
        _emit(f"dpbeam {command}: interrupted; outputs are consistent (every file is committed whole), "
              f"re-run the same command to continue")
        atexit._run_exitfuncs()  # e.g. stop a job server Beam started; the runner's worker threads are not joined
        os._exit(EXIT_INTERRUPTED)


def entry_point() -> None:
    interruption = _Interruption()
    interruption.install()
    command = next((arg for arg in sys.argv[1:] if arg in commands.BY_NAME), "")
    try:
        code = main()
    except BrokenPipeError:  # `dpbeam ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        sys.exit(0)
    except BaseException:
        if interruption.event.is_set():
            interruption.leave(command)
        raise
    if interruption.event.is_set():
        interruption.leave(command)
    sys.exit(code)
