"""What profiling needs besides crops: the feature model and the output schema.

:class:`FeatureModelSpec` is small and picklable; workers call
:meth:`FeatureModelSpec.build` once (through the RunInference model handler)
to get a Keras model from crops to feature vectors:

- a trained classifier (DeepProfiler's head) with a checkpoint loaded by layer
  name -- ours, or DeepProfiler's own HDF5 such as the Cell Painting CNN v1 --
  cut at ``profile.feature_layer`` and mean-pooled over space; or
- DeepProfiler's ImageNet baseline (``repeat_channel_crop_generator``): an
  ImageNet backbone, weights from a local file, run on every channel as a
  grey->RGB image, the per-channel vectors concatenated.

Output rows follow the pycytominer convention: every non-feature column starts
with ``Metadata_``; features are float32 columns ``<model>_<i>``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpcore.acceleration import Acceleration
from dpcore.checkpoints import CheckpointError, load_weights_by_name, read_layer_weights
from dpcore.config import DEFAULT_FEATURE_DIM
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

PRETRAINED_POOL = "avg_pool"  # Keras' name for the ImageNet models' final pooling
# File names Keras uses for its ImageNet "notop" weights; put them in inputs/pretrained/.
PRETRAINED_FILES = {
    ("efficientnet", b): f"efficientnetb{b}_notop.h5" for b in range(8)
} | {
    ("resnet", 50): "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ("resnet", 101): "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ("resnet", 152): "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ("inception_resnet_v2", 0): "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


@dataclass(frozen=True)
class FeatureModelSpec:
    model_name: str
    conv_blocks: int
    feature_layer: str
    crop_shape: tuple[int, int, int]          # (box, box, channels)
    num_classes: int = 2
    checkpoint: str | None = None             # URL of the weights file
    repeat_channel_size: int | None = None    # ImageNet baseline input size (224, 299)
    pretrained_weights: str | None = None     # URL of the ImageNet weights file
    acceleration: Acceleration = Acceleration()  # precision and XLA (--precision, --xla)
    feature_dim: int = DEFAULT_FEATURE_DIM    # the cnn's feature layer width (train.model.params.feature_dim)

    def build(self):
        """The Keras feature model (crops in [0, 1] -> vectors), at the spec's precision. Imports TensorFlow."""
        with self.acceleration.building():
            return self._build()

    def _build(self):
        from dpcore import models  # noqa: PLC0415 -- TF only on workers that profile

        if self.repeat_channel_size:
            size = self.repeat_channel_size
            base = models.backbone(self.model_name, (size, size, 3), self.conv_blocks)
            import keras  # noqa: PLC0415
            pooled = keras.layers.GlobalAveragePooling2D(name=PRETRAINED_POOL)(base.output)
            network = keras.Model(base.input, pooled, name=f"{self.model_name}_pretrained")
            if not self.pretrained_weights:
                raise CheckpointError("the ImageNet baseline needs pretrained weights (none given)")
            load_weights_by_name(network, StoragePath(self.pretrained_weights))
            per_image = models.feature_extractor(network, self.feature_layer)
            spec = models.RepeatChannelSpec(channels=self.crop_shape[2], input_size=size)
            return models.repeat_channel_extractor(per_image, spec, self.crop_shape[:2])
        network = models.classifier(self.model_name, self.crop_shape, self.num_classes, self.conv_blocks,
                                    feature_dim=self.feature_dim)
        if self.checkpoint:
            load_weights_by_name(network, StoragePath(self.checkpoint))
        else:
            logger.warning("profile.checkpoint is None: features come from an untrained (random) %s",
                           self.model_name)
        return models.feature_extractor(network, self.feature_layer)

    @property
    def feature_prefix(self) -> str:
        return self.model_name


def pretrained_weights_file(pretrained_dir: StoragePath, model_name: str, conv_blocks: int) -> StoragePath:
    """Where the Keras ImageNet "notop" weights of a model are expected (nothing is downloaded)."""
    blocks = 0 if model_name in ("inception_resnet_v2", "cnn") else conv_blocks
    return pretrained_dir / PRETRAINED_FILES.get((model_name, blocks), f"{model_name}_imagenet_notop.h5")


def classes_in_checkpoint(path: StoragePath, classifier: str = "ClassProb") -> int | None:
    """The number of classes of a checkpoint's classifier layer, if it has one."""
    weights = read_layer_weights(path).get(classifier)
    if weights:
        return int(weights[-1].shape[-1])
    return None


def metadata_name(column: str) -> str:
    return column if column.startswith("Metadata_") else f"Metadata_{column}"


def feature_table(site_metadata: dict[str, str], model_name: str, cell_indices: np.ndarray,
                  centres: np.ndarray, features: np.ndarray) -> pa.Table:
    """One row per cell: the site's index columns (``Metadata_``-prefixed), the model, the
    cell's index and centre, then float32 features ``<model>_0 ...``.

    Built as Arrow columns straight from the feature matrix: a pandas frame of
    hundreds of float columns cost ~100 ms per site to convert, more than the
    Parquet encoding itself.
    """
    rows = len(cell_indices)
    features = np.asarray(features, dtype=np.float32).reshape(rows, -1)
    names = [metadata_name(k) for k in site_metadata] + [
        "Metadata_Model", "Metadata_Cell_Index", "Metadata_Nuclei_Location_Center_X",
        "Metadata_Nuclei_Location_Center_Y"]
    arrays = [pa.array([value] * rows, pa.string()) for value in site_metadata.values()] + [
        pa.array([model_name] * rows, pa.string()),
        pa.array(np.asarray(cell_indices, dtype=np.int64)),
        pa.array(np.asarray(centres[:, 0], dtype=np.float64)),
        pa.array(np.asarray(centres[:, 1], dtype=np.float64)),
    ]
    columns = np.ascontiguousarray(features.T)  # one contiguous float32 buffer per feature column
    names += [f"{model_name}_{i}" for i in range(features.shape[1])]
    arrays += [pa.array(column) for column in columns]
    return pa.Table.from_arrays(arrays, names=names)


def feature_parquet(table: pa.Table) -> bytes:
    """A site's feature table as Parquet bytes.

    Dictionary encoding and min/max statistics only for the ``Metadata_`` columns: on hundreds of
    float features they cost a third of the write (~20 -> ~13 ms per site of 67 cells and 672
    features) and made the file larger (413 -> 311 KiB); nobody filters row groups by a feature's range.
    No Arrow schema in the footer: Parquet's own types already give the same columns back (float32,
    int64, strings), and the schema of 676 fields, base64-encoded, was 17% of the file (320 -> 266 KB)
    and ~1.5 of its ~9 ms.
    """
    metadata = [name for name in table.column_names if name.startswith("Metadata_")]
    buffer = io.BytesIO()
    pq.write_table(table, buffer, use_dictionary=metadata, write_statistics=metadata, store_schema=False)
    return buffer.getvalue()
