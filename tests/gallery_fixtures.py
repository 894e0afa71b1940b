"""A Cell Painting Gallery plate in miniature, for tests/test_gallery.py and bench/bench_s3.py.

The Gallery's layout for one plate built from the real BBBC022 images in ``tests/data``:
``images/<batch>/images/<plate>/`` TIFFs, ``images/<batch>/illum/<plate>/`` CellProfiler illumination
functions (``.npy``), ``workspace/load_data_csv/<batch>/<plate>/load_data_with_illum.csv`` whose
``PathName_`` columns point into ``GALLERY``, and a platemap; plus what a user brings (config, nuclei
locations, a seeded small checkpoint).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dpcore.storage import StoragePath

EXAMPLE = Path(__file__).parent / "data" / "bbbc022"
GALLERY = "s3://gallery/cpg0000-test/broad"
BATCH = "2026_01_01_Batch1"
PLATE = "20585"
CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")
SITES = [("A01", "1"), ("A01", "2"), ("A01", "3"), ("A13", "1"), ("A13", "2"), ("A13", "3")]
TREATMENTS = {"A01": "NIFLUMIC ACID", "A13": "DMSO"}


def build_gallery(folder: Path, sites: list[tuple[str, str]] = SITES, gallery: str = GALLERY) -> None:
    """The Gallery's layout for one plate, in a local folder: images, CellProfiler functions, CSVs."""
    index = pd.read_csv(EXAMPLE / "inputs/metadata/index.csv", dtype=str)
    images = folder / "images" / BATCH / "images" / PLATE
    illum = folder / "images" / BATCH / "illum" / PLATE
    images.mkdir(parents=True)
    illum.mkdir(parents=True)
    rows = []
    for well, site in sites:
        source = index[(index.Metadata_Well == well) & (index.Metadata_Site == site)].iloc[0]
        row = {"Metadata_Plate": PLATE, "Metadata_Well": well, "Metadata_Site": site, "Metadata_Source": "broad"}
        for channel in CHANNELS:
            name = Path(source[channel]).name
            shutil.copy(EXAMPLE / "inputs/images" / source[channel], images / name)
            row |= {f"FileName_Orig{channel}": name, f"PathName_Orig{channel}": f"{gallery}/images/{BATCH}/images/{PLATE}",
                    f"FileName_Illum{channel}": f"{PLATE}_Illum{channel}.npy",
                    f"PathName_Illum{channel}": f"{gallery}/images/{BATCH}/illum/{PLATE}"}
        rows.append(row)
    yy, xx = np.mgrid[:520, :696]
    for number, channel in enumerate(CHANNELS):  # smooth, positive, a different vignette per channel
        function = 1.0 + 0.3 * np.exp(-((yy - 260) ** 2 + (xx - 348 - 20 * number) ** 2) / 2e5)
        np.save(illum / f"{PLATE}_Illum{channel}.npy", function)
    csvs = folder / "workspace/load_data_csv" / BATCH / PLATE
    csvs.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(csvs / "load_data_with_illum.csv", index=False)
    platemap = folder / "workspace/metadata/platemap.csv"
    platemap.parent.mkdir(parents=True)
    pd.DataFrame([{"Metadata_Plate": PLATE, "Metadata_Well": well, "Treatment": treatment, "Split": split}
                  for (well, treatment), split in zip(TREATMENTS.items(), ("0", "1"))]).to_csv(platemap, index=False)


def project_files(root: StoragePath, sites: list[tuple[str, str]] = SITES) -> None:
    """Config, nuclei locations and a seeded small checkpoint: what a user brings besides the Gallery's files."""
    config = json.loads((EXAMPLE / "inputs/config/bbbc022.json").read_text())
    config["dataset"]["locations"]["box_size"] = 64
    config["train"]["model"]["name"] = "cnn"
    config["train"]["model"]["params"]["conv_blocks"] = 3
    config["profile"].update({"feature_layer": "features", "checkpoint": "cnn.hdf5", "batch_size": 32})
    (root / "inputs/config/gallery.json").write_text(json.dumps(config))
    for well, site in sites:
        name = f"{PLATE}/{well}-{site}-Nuclei.csv"
        (root / "inputs/locations" / name).write_bytes((EXAMPLE / "inputs/locations" / name).read_bytes())
    import keras  # noqa: PLC0415

    from dpcore import models  # noqa: PLC0415
    from dpcore.checkpoints import save_weights  # noqa: PLC0415

    keras.utils.set_random_seed(5)
    save_weights(models.classifier("cnn", (64, 64, 5), 2, conv_blocks=3), root / "outputs/results/checkpoint/cnn.hdf5")
