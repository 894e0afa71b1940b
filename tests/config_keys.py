"""Every config key does something, and a test knows it.

``KEY_TESTS`` names, for every key the config reader knows, the tests that fail when that key is *ignored*:
when the reader hands every consumer the value a lazy implementation would have hard-coded (the key's
default; for a key without one, the example config's value) whatever the file says. ``ignore_key``
installs exactly that change in ``dpcore.config``; ``scripts/config_keys.py`` runs each key's tests with it
(in subprocesses too, through ``tests/config_mutation/sitecustomize.py``) and expects them to fail.
``tests/test_config_keys.py`` checks, in the suite, that the table names every key and only tests that
exist, and runs the check for a few keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPOSITORY / "tests/data/bbbc022/inputs/config/bbbc022.json"
ENVIRONMENT_VARIABLE = "DPBEAM_IGNORE_CONFIG_KEY"
LR_SCHEDULE = "train.model.lr_schedule"  # read as a whole (a name or an {epoch, lr} object)

# key -> tests that fail when the key is ignored (found and confirmed by scripts/config_keys.py).
KEY_TESTS: dict[str, tuple[str, ...]] = {
    "dataset.metadata.label_field":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "dataset.metadata.control_value":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "dataset.images.channels": ("tests/test_locate.py::test_8_bit_three_channel_png_project",),
    "dataset.images.file_format":
        ("tests/test_metadata.py::test_images_of_another_format_than_the_configs_are_refused_by_line",),
    "dataset.images.bits": ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "dataset.images.width": ("tests/test_locate.py::test_8_bit_three_channel_png_project",),
    "dataset.images.height": ("tests/test_locate.py::test_8_bit_three_channel_png_project",),
    "dataset.locations.mode": ("tests/test_export_pipeline.py::test_full_image_mode_exports_deepprofilers_tiles",),
    "dataset.locations.box_size":
        ("tests/test_export_pipeline.py::test_labels_and_splits_come_from_the_configured_columns",),
    "dataset.locations.view_size":
        ("tests/test_export_pipeline.py::test_full_image_mode_exports_deepprofilers_tiles",),
    "dataset.locations.mask_objects":
        ("tests/test_export_pipeline.py::test_mask_objects_without_outlines_fails_clearly_before_any_work",),
    "prepare.illumination_correction.down_scale_factor":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "prepare.illumination_correction.median_filter_size":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "prepare.illumination_correction.functions":
        ("tests/test_prepare_pipeline.py::test_cellprofiler_functions_chosen_in_the_config_need_their_index_columns",),
    "prepare.compression.implement":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "prepare.compression.scaling_factor":
        ("tests/test_prepare_pipeline.py::test_every_prepare_setting_reaches_the_outputs",),
    "profile.feature_layer": ("tests/test_buckets.py::test_the_whole_chain_runs_on_a_bucket",),
    "profile.checkpoint": ("tests/test_buckets.py::test_the_whole_chain_runs_on_a_bucket",),
    "profile.batch_size":
        ("tests/test_profile_pipeline.py::test_resume_skips_committed_sites_and_overwrite_redoes_them",),
    "profile.use_pretrained_input_size": ("tests/test_profile_pipeline.py::test_repeat_channel_imagenet_baseline",),
    "train.partition.targets":
        ("tests/test_export_pipeline.py::test_labels_and_splits_come_from_the_configured_columns",),
    "train.partition.split_field":
        ("tests/test_export_pipeline.py::test_labels_and_splits_come_from_the_configured_columns",),
    "train.partition.training":
        ("tests/test_export_pipeline.py::test_labels_and_splits_come_from_the_configured_columns",),
    "train.partition.validation":
        ("tests/test_export_pipeline.py::test_labels_and_splits_come_from_the_configured_columns",),
    "train.model.params.learning_rate": ("tests/test_train.py::test_step_schedule_sets_the_rate_of_each_epoch",),
    "train.model.params.batch_size": ("tests/test_train.py::test_a_small_model_learns_the_synthetic_classes",),
    "train.model.params.conv_blocks": ("tests/test_buckets.py::test_the_whole_chain_runs_on_a_bucket",),
    "train.model.params.label_smoothing":
        ("tests/test_train.py::test_label_smoothing_and_the_cnn_feature_width_reach_the_model",),
    "train.model.params.online_label_smoothing":
        ("tests/test_train.py::test_online_labels_are_per_cell_and_move_toward_the_models_predictions",),
    "train.model.params.online_lambda":
        ("tests/test_train.py::test_online_labels_are_per_cell_and_move_toward_the_models_predictions",),
    "train.model.params.feature_dim":
        ("tests/test_train.py::test_label_smoothing_and_the_cnn_feature_width_reach_the_model",),
    "train.model.name": ("tests/test_buckets.py::test_the_whole_chain_runs_on_a_bucket",),
    "train.model.crop_generator": ("tests/test_gallery.py::test_train_reads_its_shards_from_s3_as_from_local_files",),
    "train.model.augmentations":
        ("tests/test_train.py::test_the_command_trains_on_augmented_crops_when_the_config_asks",),
    "train.model.metrics": ("tests/test_train.py::test_a_small_model_learns_the_synthetic_classes",),
    "train.model.epochs": ("tests/test_train.py::test_a_small_model_learns_the_synthetic_classes",),
    "train.model.initialization":
        ("tests/test_train.py::test_imagenet_initialisation_needs_a_local_file_and_replicates_rgb_filters",),
    "train.model.checkpoint_policy": ("tests/test_train.py::test_checkpoints_only_every_n_epochs",
                                      "tests/test_train.py::test_best_policy_saves_only_improvements"),
    "train.model.lr_schedule": ("tests/test_train.py::test_step_schedule_sets_the_rate_of_each_epoch",),
    "train.validation.top_k": ("tests/test_train.py::test_a_small_model_learns_the_synthetic_classes",),
    "aggregate.level":
        ("tests/test_profiles.py::test_strata_that_files_do_not_tell_are_reduced_through_a_shuffle_of_cells",),
    "aggregate.strata":
        ("tests/test_profiles.py::test_strata_that_files_do_not_tell_are_reduced_through_a_shuffle_of_cells",),
    "aggregate.operation": ("tests/test_profiles.py::test_mad_robustize_and_feature_selection_match_pycytominer",),
    "aggregate.normalize.method":
        ("tests/test_profiles.py::test_mad_robustize_and_feature_selection_match_pycytominer",),
    "aggregate.normalize.samples":
        ("tests/test_profiles.py::test_mad_robustize_and_feature_selection_match_pycytominer",),
    "aggregate.feature_select.corr_threshold":
        ("tests/test_profiles.py::test_mad_robustize_and_feature_selection_match_pycytominer",),
    "evaluate.annotation_column":
        ("tests/test_profiles.py::test_phenotypic_activity_is_copairs_map_and_equals_average_precision_by_hand",),
    "locate.channel": ("tests/test_locate.py::test_8_bit_three_channel_png_project",),
    "locate.qc_sites": ("tests/test_locate.py::test_8_bit_three_channel_png_project",),
    "locate.use_illumination": ("tests/test_locate.py::test_locate_then_export_completes_the_chain_on_a_project_without_locations",),
    "locate.threshold": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.threshold_correction": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.smoothing_sigma": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.min_diameter": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.max_diameter": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.size_unit": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.pixel_size": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.split_touching": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.declump_ratio": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "locate.exclude_border": ("tests/test_locate.py::test_the_configs_locate_settings_reach_the_finder_in_pixels",),
    "aggregate.feature_select.operations": ("tests/test_profiles.py::test_every_feature_selection_and_consensus_setting_reaches_pycytominer",),
    "aggregate.feature_select.freq_cut": ("tests/test_profiles.py::test_every_feature_selection_and_consensus_setting_reaches_pycytominer",),
    "aggregate.feature_select.unique_cut": ("tests/test_profiles.py::test_every_feature_selection_and_consensus_setting_reaches_pycytominer",),
    "aggregate.feature_select.na_cutoff": ("tests/test_profiles.py::test_every_feature_selection_and_consensus_setting_reaches_pycytominer",),
    "aggregate.treatment_columns": ("tests/test_profiles.py::test_every_feature_selection_and_consensus_setting_reaches_pycytominer",),
    "evaluate.level": ("tests/test_profiles.py::test_every_evaluate_setting_reaches_copairs",),
    "evaluate.threshold": ("tests/test_profiles.py::test_every_evaluate_setting_reaches_copairs",),
    "evaluate.seed": ("tests/test_profiles.py::test_every_evaluate_setting_reaches_copairs",),
    "evaluate.distance": ("tests/test_profiles.py::test_every_evaluate_setting_reaches_copairs",),
    "evaluate.null_size": ("tests/test_profiles.py::test_every_evaluate_setting_reaches_copairs",),
    "train.sampling.factor": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.sampling.cache_size": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.sampling.workers": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.validation.frequency": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.validation.batch_size": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.validation.frame": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
    "train.validation.sample_first_crops": ("tests/test_train.py::test_every_sampling_and_validation_setting_reaches_the_trainer",),
}

# Keys no test catches yet when ignored (the last run of scripts/config_keys.py), with what would.
NOT_YET_CAUGHT: dict[str, str] = {}


def reader_keys() -> dict[str, Any]:
    """Every key path the config reader asks for, with the value ``ignore_key`` hands out instead."""
    from dpcore import config

    asked: dict[str, Any] = {}
    original = config._Reader.value

    def recording(self, name, convert, expected, default=None):
        result = original(self, name, convert, expected, default)
        asked.setdefault(self.key(name), result if default is None else default)
        return result

    config._Reader.value = recording
    try:
        config.parse_config(json.loads(EXAMPLE_CONFIG.read_text()))
    finally:
        config._Reader.value = original
    asked[LR_SCHEDULE] = None  # absent: the base learning rate throughout
    return asked


def ignore_key(key_path: str) -> None:
    """From now on the config reader validates ``key_path`` as usual but hands every consumer the value
    a hard-coded implementation would use: its default, or the example's value when it has none."""
    from dpcore import config

    replacements = reader_keys()
    if key_path not in replacements:
        raise KeyError(f"{key_path} is not a key the config reader knows")
    replacement = replacements[key_path]
    if key_path == LR_SCHEDULE:
        original_schedule = config._lr_schedule

        def no_schedule(r):
            original_schedule(r)  # still validated
            return None

        config._lr_schedule = no_schedule
        return
    original = config._Reader.value

    def ignoring(self, name, convert, expected, default=None):
        result = original(self, name, convert, expected, default)
        return replacement if self.key(name) == key_path else result

    config._Reader.value = ignoring
