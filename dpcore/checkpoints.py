"""Weights files: DeepProfiler's Keras-2 HDF5 checkpoints, read and written by layer name.

DeepProfiler saved ``model.save_weights("checkpoint_0030.hdf5")`` with Keras 2:
an HDF5 file whose ``layer_names`` attribute lists layer groups, each with a
``weight_names`` attribute naming its arrays (``stem_conv/kernel:0`` ...), in
the order Keras creates a layer's weights -- the same order Keras 3 uses.
Reading by name lets a checkpoint load into any model that shares layer names;
a layer whose shapes differ (the classifier of a model with another number of
classes) is skipped and reported, as DeepProfiler did. Writing the same format
keeps our checkpoints loadable by DeepProfiler and by ``keras.Model.load_weights``.

Files are read through :class:`StoragePath`, so they may live in a bucket.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

import h5py
import numpy as np

from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # layer -> why
    missing: list[str] = field(default_factory=list)        # model layers with weights the file lacks

    def summary(self) -> str:
        text = f"{len(self.loaded)} layer(s) loaded"
        if self.skipped:
            text += "; skipped: " + "; ".join(f"{k} ({v})" for k, v in sorted(self.skipped.items()))
        if self.missing:
            text += f"; {len(self.missing)} layer(s) not in the file (e.g. {', '.join(self.missing[:3])})"
        return text


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def file_sha256(path: StoragePath) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_layer_weights(path: StoragePath) -> dict[str, list[np.ndarray]]:
    """Layer name -> arrays, from a Keras-2 weights file (or a full-model file's ``model_weights``)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with h5py.File(io.BytesIO(path.read_bytes()), "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in group.attrs:
                raise CheckpointError(
                    f"{path} is not a Keras-2 HDF5 weights file (no 'layer_names'); "
                    f"save weights with dpbeam train or Keras 2 save_weights")
            layers = {}
            for name in _decode(group.attrs["layer_names"]):
                weight_names = _decode(group[name].attrs.get("weight_names", []))
                layers[name] = [np.asarray(group[name][w]) for w in weight_names]
            return layers
    except (OSError, KeyError) as error:
        raise CheckpointError(f"{path}: not a readable HDF5 weights file ({error})") from error


def load_weights_by_name(model, path: StoragePath, skip_mismatch: bool = True) -> LoadReport:
    """Assign the file's weights to the model's layers of the same names."""
    stored = read_layer_weights(path)
    report = LoadReport()
    for layer in model.layers:
        variables = layer.weights
        if not variables:
            continue
        arrays = stored.get(layer.name)
        if arrays is None:
            report.missing.append(layer.name)
            continue
        shapes_match = len(arrays) == len(variables) and all(
            tuple(a.shape) == tuple(v.shape) for a, v in zip(arrays, variables))
        if not shapes_match:
            why = (f"file {[tuple(a.shape) for a in arrays]} vs model {[tuple(v.shape) for v in variables]}")
            if not skip_mismatch:
                raise CheckpointError(f"{path}: layer {layer.name} does not fit ({why}): is it a checkpoint of "
                                      f"another architecture or number of classes?")
            report.skipped[layer.name] = why
            continue
        for variable, array in zip(variables, arrays):
            variable.assign(array)
        report.loaded.append(layer.name)
    if not report.loaded:
        raise CheckpointError(f"{path}: no layer name matches the model ({len(stored)} layers in the file, "
                              f"e.g. {', '.join(list(stored)[:3])}); is it a checkpoint of another architecture?")
    logger.info("weights from %s: %s", path, report.summary())
    return report


def save_weights(model, path: StoragePath) -> None:
    """Write the model's weights in the Keras-2 HDF5 layout (atomically)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        names = []
        for layer in model.layers:
            names.append(layer.name)
            group = handle.create_group(layer.name)
            weight_names = []
            for index, variable in enumerate(layer.weights):
                leaf = variable.path.split("/")[-1] if hasattr(variable, "path") else f"weight_{index}"
                weight_name = f"{layer.name}/{leaf}:0"
                if weight_name in weight_names:
                    weight_name = f"{layer.name}/{leaf}_{index}:0"
                group.create_dataset(weight_name, data=np.asarray(variable.numpy()))
                weight_names.append(weight_name)
            group.attrs["weight_names"] = np.array([w.encode("utf-8") for w in weight_names])
        handle.attrs["layer_names"] = np.array([n.encode("utf-8") for n in names])
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.15.0"
    path.write_bytes(buffer.getvalue())
