"""A learnable synthetic single-cell export, written in export-sc's exact format.

Three classes drawn in channel 0 on noise: a centred bright disk, a ring, and
vertical stripes; the other channels are noise. A small CNN separates them in
a few epochs, so a test can tell whether training really learns.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dpcore import sc_export, sc_records
from dpcore.storage import StoragePath

LABELS = ("disk", "ring", "stripes")


def synthetic_crop(label: int, box: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box]
    radius = np.hypot(yy - box / 2 + rng.normal(0, 1), xx - box / 2 + rng.normal(0, 1))
    image = rng.uniform(0, 0.3, size=(box, box, channels))
    if label == 0:
        image[..., 0] += (radius < box / 4) * 0.7
    elif label == 1:
        image[..., 0] += ((radius > box / 4) & (radius < box / 3)) * 0.7
    else:
        image[..., 0] += ((xx // 3) % 2 == 0) * 0.7
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_synthetic_export(folder: Path, counts: dict[str, tuple[int, ...]], box: int = 32, channels: int = 3,
                           seed: int = 0, sites_per_label: int = 4, shards: int = 1) -> None:
    """``counts`` maps a split (training/validation) to cells per label; each split's cells are dealt over
    ``shards`` shard files in turn."""
    rng = np.random.default_rng(seed)
    rows, names = [], {}
    for split, per_label in counts.items():
        records = []
        for label, n in enumerate(per_label):
            for i in range(n):
                site = str(i % sites_per_label + 1)
                cell = i // sites_per_label
                records.append(sc_records.CellRecord(
                    synthetic_crop(label, box, channels, rng), label, LABELS[label], split, split, "P1",
                    f"{LABELS[label]}-well", site, cell, 10.0, 10.0))
        order = rng.permutation(len(records))
        names[split] = []
        for shard in range(shards):
            name = sc_records.shard_name(split, shard, shards)
            mine = order[shard::shards]
            sc_records.write_shard(StoragePath(str(folder / name)), (sc_records.encode(records[i]) for i in mine))
            names[split].append(name)
            for position, i in enumerate(mine):
                r = records[i]
                rows.append({"Metadata_Plate": r.plate, "Metadata_Well": r.well, "Metadata_Site": r.site,
                             "Cell_Index": r.cell_index, "Label": r.label, "Split_Set": split, "Shard": name,
                             "Record": position})
    (folder / sc_export.INDEX_DIR).mkdir(parents=True, exist_ok=True)
    for split in counts:
        buffer = io.BytesIO()
        pd.DataFrame([r for r in rows if r["Split_Set"] == split]).to_parquet(buffer, index=False)
        (folder / sc_export.INDEX_DIR / sc_export.index_part_name(split, 0)).write_bytes(buffer.getvalue())
    per_split_label = {split: {LABELS[label]: n for label, n in enumerate(per_label)}
                       for split, per_label in counts.items()}
    manifest = {"format": "tfrecord", "feature_spec_version": sc_records.FEATURE_SPEC_VERSION, "box_size": box,
                "channels": [f"C{c}" for c in range(channels)], "compression": "", "labels": list(LABELS),
                "counts": {split: sum(v) for split, v in counts.items()} | {"other": 0},
                "counts_per_split_label": per_split_label | {"other": {}},
                "shards": names | {"other": []}}
    (folder / sc_export.MANIFEST_NAME).write_text(json.dumps(manifest))


def synthetic_config(epochs: int = 3, **model_overrides) -> dict:
    model = {"name": "cnn", "crop_generator": "sampled_crop_generator", "augmentations": False,
             "metrics": ["accuracy", "top_k", "average_class_precision"], "epochs": epochs,
             "initialization": "Random", "checkpoint_policy": 1,
             "params": {"learning_rate": 0.005, "batch_size": 32, "conv_blocks": 3, "label_smoothing": 0.0}}
    model.update(model_overrides)
    return {
        "dataset": {"metadata": {"label_field": "Shape", "control_value": "disk"},
                    "images": {"channels": ["C0", "C1", "C2"], "file_format": "tif", "bits": 8,
                               "width": 200, "height": 200},
                    "locations": {"mode": "single_cells", "box_size": 32, "view_size": 32}},
        "train": {"partition": {"targets": ["Shape"], "split_field": "Split", "training": ["training"],
                                "validation": ["validation"]},
                  "model": model,
                  "sampling": {"factor": 1.0, "cache_size": 500, "workers": 1},
                  "validation": {"frequency": 1, "top_k": 2, "batch_size": 32, "frame": "val",
                                 "sample_first_crops": False}},
        "profile": {"feature_layer": "pool5", "checkpoint": "checkpoint_0003.hdf5", "batch_size": 32},
    }
