"""The checks each pipeline command runs before any work, callable one by one for ``validate``.

``validate`` must never say "no problems" about a config a command then refuses. So it does not
keep its own copy of the commands' rules: it calls the very functions the commands call before they
start (required keys, the crop source, train's config checks, profile's model, layer and checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dpcore.config import Config, ConfigError
from dpcore.layout import ProjectLayout
from dpcore.single_cells import CellSource

logger = logging.getLogger(__name__)

PIPELINE_COMMANDS = ("prepare", "export-sc", "train", "profile")

# What the commands' checks raise when inputs are wrong: ConfigError, UsageError, MetadataError, ModelError,
# CheckpointError, TrainingError, UnsafePathError are all ValueErrors (the CLI reports them the same way).
_REFUSALS = (ValueError, FileNotFoundError)


@dataclass
class Readiness:
    """Whether one command would start on this project, and what it would refuse."""

    command: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems


def _messages(error: Exception) -> list[str]:
    return list(error.problems) if isinstance(error, ConfigError) else [str(error)]


def check_command(command: str, layout: ProjectLayout, config: Config) -> Readiness:
    """Run ``command``'s own pre-start checks; never raises for a refusal."""
    readiness = Readiness(command)
    try:
        config.require(command)
    except ConfigError as error:
        readiness.problems += error.problems
        return readiness  # the deeper checks need those keys
    try:
        if command in ("export-sc", "profile"):
            CellSource.from_config(layout, config)  # crop geometry, outlines for mask_objects
        if command == "train":
            _check_train(layout, config)
        if command == "profile":
            _check_profile(layout, config, readiness)
    except _REFUSALS as error:
        readiness.problems += _messages(error)
    return readiness


def _check_train(layout: ProjectLayout, config: Config) -> None:
    from beam_pipelines.train import check_config, pretrained_weights  # noqa: PLC0415 -- keeps imports light

    check_config(config, pretrained_weights(layout, config, None))


def _check_profile(layout: ProjectLayout, config: Config, readiness: Readiness) -> None:
    """Build profile's model as profile does (TensorFlow loads): the layer must exist, the checkpoint fit."""
    from beam_pipelines.profile import build_spec, resolve_checkpoint  # noqa: PLC0415 -- loads Beam

    checkpoint = resolve_checkpoint(layout, config.profile.checkpoint)
    if checkpoint is not None and not checkpoint.exists():
        readiness.notes.append(f"profile.checkpoint {config.profile.checkpoint!r} does not exist yet ({checkpoint}); "
                               f"train writes it, profile needs it. Its layer was checked on an untrained model")
    spec = build_spec(layout, config, None, missing_checkpoint_ok=True)
    logger.info("validate: building %s to check profile.feature_layer %r", spec.model_name, spec.feature_layer)
    quiet = logging.getLogger("dpcore.profiling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "untrained model" warning is about profiling, not this check
    try:
        model = spec.build()
    finally:
        quiet.setLevel(level)
    readiness.notes.append(f"profile: {spec.model_name} layer {spec.feature_layer} gives "
                           f"{int(model.output.shape[-1])} features per cell")


def misspelt_keys(config: Config) -> list[str]:
    """Unknown keys that look like typos: problems, because the command would ignore them silently."""
    return [f"{key} is not a config key: did you mean {known.rsplit('.', 1)[-1]!r} ({known})?"
            for key, known in config.misspelt_keys.items()]
