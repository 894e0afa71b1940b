"""What every command receives: the project layout, the config, the GPU choice
and the Beam pipeline arguments that followed the command on the line."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Sequence

from dpcore.acceleration import Acceleration
from dpcore.config import Config, ConfigError, load_config
from dpcore.layout import ProjectLayout

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """The command line cannot be used as given."""


@dataclass(frozen=True)
class CommandContext:
    layout: ProjectLayout
    config_name: str | None = None
    gpu: str | None = None
    beam_args: tuple[str, ...] = field(default_factory=tuple)
    cores: int = 0  # --cores: local cores to use, 0 = all (DeepProfiler's flag)
    # The Beam arguments as the user gave them, before local_parallelism's defaults; None: the command
    # takes them as they are (aggregate; commands without a pipeline).
    own_beam_args: tuple[str, ...] | None = None

    def sized_for(self, sites: int) -> "CommandContext":
        """The same context with the local default parallelism for a run of ``sites`` sites: one in-process
        worker below FEW_SITES_PER_THREAD per thread (see local_parallelism)."""
        if self.own_beam_args is None:
            return self
        sized = local_parallelism(self.own_beam_args, self.cores, sites=sites)
        if sized != self.beam_args:
            logger.info("%d site(s) to process: one in-process worker on the local runner (threads start "
                        "slower than they gain below %d sites per thread)", sites, FEW_SITES_PER_THREAD)
        return replace(self, beam_args=sized)

    @property
    def workers_in_this_process(self) -> bool:
        """False where the pipeline's work surely runs in other processes (the local runner's
        ``multi_processing`` workers): then this process need not load what only workers use. Other runners
        count as True, since a portable runner's LOOPBACK workers run inside the launcher."""
        # Beam is imported here, not with this module: commands without a pipeline start without it.
        from apache_beam.options.pipeline_options import (  # noqa: PLC0415
            DirectOptions, PipelineOptions, StandardOptions)

        options = PipelineOptions(list(self.beam_args))
        runner = str(options.view_as(StandardOptions).runner or "DirectRunner")
        return not (runner.endswith("DirectRunner")
                    and options.view_as(DirectOptions).direct_running_mode == "multi_processing")

    def load_config(self, command: str) -> Config:
        """Load ``--config`` and check it has what ``command`` needs (fails fast)."""
        if not self.config_name:
            raise UsageError(f"the {command!r} command needs --config NAME.json "
                             f"(a file in {self.layout.config_dir}, a path or a gs:// URI)")
        config = load_config(self.layout.config_file(self.config_name))
        config.require(command)
        return config

    def with_config_paths(self, config: Config) -> "CommandContext":
        """The same context with the config's ``paths`` overrides applied to the layout."""
        if not config.paths:
            return self
        root = config.paths.get("root", self.layout.root)
        layout = ProjectLayout.create(root, self.layout.experiment, self.layout.single_cells,
                                      self.layout.metadata_file, overrides=config.paths)
        return replace(self, layout=layout)

    def select_gpu(self) -> None:
        """Expose only ``--gpu`` devices to TensorFlow, as DeepProfiler did."""
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
            logger.info("CUDA_VISIBLE_DEVICES=%s", self.gpu)


# Below this many sites per worker thread a run gets one in-process worker instead. On 2 cores, one plate of
# 12 sites (2026-12-02, the example): prepare 6.0-6.3 s in memory against 5.8-7.1 s with two threads,
# export-sc 4.6-5.7 against 4.5-4.8 s, profile (EfficientNet-B0) 28-30 against 29-31 s, for 10-25% less CPU;
# 4 sites: profile 1.9-3.1 against 3.7-4.4 s. Threads pay a runner start-up per stage that a few sites do
# not earn back; from a few plates on they gain 1.4-1.7x (local_parallelism).
FEW_SITES_PER_THREAD = 8


def local_parallelism(beam_args: Sequence[str], cores: int = 0, threads: bool = True,
                      sites: int | None = None) -> tuple[str, ...]:
    """On the local DirectRunner, default to one worker thread per core (every pipeline command but aggregate).

    Much of each stage's work runs outside the GIL (numpy's array loops, ISA-L's deflate in prepare,
    TensorFlow in profile), so threads of one process overlap: on 2 cores prepare went from ~3.1 to
    ~5 sites/s, export-sc from ~235 to ~337 cells/s and profile from ~120 to ~170 cells/s (threads, unlike
    worker processes, import nothing again). They cost more runner start-up than the single in-process
    worker, 0.6-2 s of CPU per run (more stages' bundles, set-ups and gRPC exchange), hence ``sites``.
    ``cores`` (``--cores``, 0 = all) sets the number of threads. Users' own --runner/--direct_* choices
    always win.

    ``sites``, when the command knows how many sites it will process: fewer than FEW_SITES_PER_THREAD per
    thread get one in-process worker (Beam's in_memory mode), which finishes a handful of sites sooner.

    ``threads=False`` (aggregate) defaults to one in-process worker (Beam's in_memory mode) instead:
    aggregate's work is small (one row per group, the tables finished in one step anyway), and its runs on
    the multi-threaded local runner failed twice on 2026-12-01 (2 of ~15 demo runs, both on a loaded
    machine) with ``NotImplementedError: Invalid PaneInfoEncoding`` in Beam's exchange of bundle outputs
    between threads, which the in_memory runner does not use.
    """
    beam_args = tuple(beam_args)
    chosen = " ".join(beam_args)
    if "--runner" in chosen and "DirectRunner" not in chosen:
        return beam_args
    if "--direct_num_workers" in chosen or "--direct_running_mode" in chosen:
        return beam_args
    threads_wanted = cores or os.cpu_count() or 1
    few_sites = sites is not None and threads_wanted > 1 and sites < FEW_SITES_PER_THREAD * threads_wanted
    if not threads or few_sites:
        return beam_args + ("--direct_num_workers=1", "--direct_running_mode=in_memory")
    return beam_args + (f"--direct_num_workers={threads_wanted}", "--direct_running_mode=multi_threading")


def acceleration_options(args, config_batch_size: int, batch_key: str) -> tuple[int, Acceleration]:
    """(batch size, precision and XLA) from ``--batch-size``, ``--precision`` and ``--xla``."""
    batch_size = config_batch_size if getattr(args, "batch_size", None) is None else args.batch_size
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size}; the config's {batch_key} applies "
                         f"when it is not given)")
    return batch_size, Acceleration(getattr(args, "precision", "float32"), bool(getattr(args, "xla", False)))


__all__ = ["CommandContext", "ConfigError", "UsageError", "acceleration_options", "local_parallelism"]
