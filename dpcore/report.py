"""``outputs/<exp>/report/index.html``: one self-contained page a scientist opens after a run.

Every picture is embedded (``data:image/png;base64``), so the page can be mailed or copied out of a
bucket and still shows everything. Sections appear when their inputs exist and say what to run when not:
plate maps (cells per well, failed sites), the illumination functions, the crop montage, training curves,
a 2-D embedding of the well profiles coloured by treatment, the mAP table and plot, and the run's
provenance. A small script at the end counts the images that decoded (``data-images-loaded``), which the
tests read from a real headless browser.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import platform
import re
import time
from importlib import metadata as package_metadata
from typing import Sequence

import numpy as np
import pandas as pd

from dpcore.config import Config
from dpcore.layout import ProjectLayout
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

PACKAGES = ("dpbeam", "apache-beam", "tensorflow", "numpy", "pandas", "scikit-image", "pycytominer", "copairs")
FAILURE_FILES = ("prepare", "export", "profile", "locate", "aggregate")


def profiles_dir(layout: ProjectLayout) -> StoragePath:
    return layout.experiment_dir / "profiles"


def evaluation_dir(layout: ProjectLayout) -> StoragePath:
    return layout.experiment_dir / "evaluation"


def report_file(layout: ProjectLayout) -> StoragePath:
    return layout.experiment_dir / "report" / "index.html"


# ------------------------------------------------------------------ pieces
def _img(data: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _missing(what: str, how: str) -> str:
    return f'<p class="missing">No {html.escape(what)} yet: {html.escape(how)}.</p>'


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", border=0, classes="data")


def well_position(well: str) -> tuple[int, int] | None:
    """``A01`` -> (0, 0), ``P24`` -> (15, 23); None for names that are not plate positions."""
    match = re.fullmatch(r"([A-Za-z]{1,2})0*(\d+)", str(well).strip())
    if not match:
        return None
    letters, number = match.groups()
    row = 0
    for letter in letters.upper():
        row = row * 26 + (ord(letter) - 64)
    return row - 1, int(number) - 1


def plate_map(values: dict[str, float], plate: str, title: str, unit: str) -> bytes:
    """A plate heat map: one cell per well position, ``values`` by well name (wells without a value grey)."""
    from dpcore.charts import _figure, _png  # noqa: PLC0415

    positions = {well: well_position(well) for well in values}
    rows = max([p[0] for p in positions.values() if p] + [7]) + 1
    columns = max([p[1] for p in positions.values() if p] + [11]) + 1
    grid = np.full((rows, columns), np.nan)
    for well, position in positions.items():
        if position:
            grid[position] = values[well]
    figure = _figure(0.45 * columns + 2.0, 0.42 * rows + 1.2)
    ax = figure.subplots()
    import matplotlib  # noqa: PLC0415

    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")  # wells without a value: grey
    shown = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, aspect="equal")
    ax.set_xticks(range(columns), [str(c + 1) for c in range(columns)], fontsize=7)
    ax.set_yticks(range(rows), [chr(65 + r) if r < 26 else f"A{chr(39 + r)}" for r in range(rows)], fontsize=7)
    figure.colorbar(shown, ax=ax, fraction=0.04).set_label(unit)
    ax.set_title(f"plate {plate}: {title}", fontsize=10)
    return _png(figure)


def embedding(profiles: pd.DataFrame, colour_by: str | None) -> bytes:
    """The profiles' first two principal components (numpy SVD), one colour per treatment."""
    from dpcore.charts import _figure, _png  # noqa: PLC0415

    features = profiles[[c for c in profiles.columns if not c.startswith("Metadata_")]].to_numpy(np.float64)
    features = np.nan_to_num(features - np.nanmean(features, axis=0))
    _, singular, vt = np.linalg.svd(features, full_matrices=False)
    points = features @ vt[:2].T if len(vt) >= 2 else np.column_stack([features @ vt[:1].T, np.zeros(len(features))])
    explained = (singular[:2] ** 2 / max((singular ** 2).sum(), 1e-12)) if len(singular) else np.zeros(2)
    figure = _figure(6.5, 5.0)
    ax = figure.subplots()
    labels = profiles[colour_by].astype(str) if colour_by and colour_by in profiles.columns else pd.Series(
        ["profiles"] * len(profiles))
    for number, label in enumerate(sorted(labels.unique())):
        chosen = (labels == label).to_numpy()
        ax.scatter(points[chosen, 0], points[chosen, 1], s=24, label=label[:30], color=f"C{number % 10}")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1] if len(explained) > 1 else 0:.0%})")
    ax.set_title(f"{len(profiles)} profiles, principal components", fontsize=10)
    if labels.nunique() <= 20:
        ax.legend(fontsize=7, loc="best")
    return _png(figure)


def committed(folder: StoragePath) -> bool:
    """Whether the run that wrote ``folder`` finished: aggregate and evaluate write ``_manifest.json`` last and
    remove it first, so files without it may be an interrupted run's or an earlier one's."""
    return (folder / "_manifest.json").exists()


def _read_parquet(path: StoragePath) -> pd.DataFrame | None:
    if not path.exists() or not committed(path.parent):
        return None
    with path.open("rb") as handle:
        return pd.read_parquet(handle)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _failures(layout: ProjectLayout) -> list[dict]:
    """Every dead letter of the project's last runs, from their JSON-lines files."""
    files = [layout.prepare_failures_file, layout.outputs / "locate" / "_failed" / "locate-failures.jsonl",
             profiles_dir(layout) / "_failed" / "aggregate-failures.jsonl"]
    files += layout.single_cells_dir.glob("_failed/*.jsonl") if layout.single_cells_dir.exists() else []
    files += layout.features_dir.glob("_failed/*.jsonl") if layout.features_dir.exists() else []
    records = []
    for path in files:
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


# ------------------------------------------------------------------ page
def build_report(layout: ProjectLayout, config: Config) -> tuple[str, list[str]]:
    """The page's HTML and the sections it could not fill (each with what to run)."""
    missing: list[str] = []
    level = config.aggregate.level
    reduced = _read_parquet(profiles_dir(layout) / f"{level}.parquet")
    selected = _read_parquet(profiles_dir(layout) / f"{level}_normalized_feature_select.parquet")
    label = config.dataset.metadata.label_field
    label_column = None if not label else (label if label.startswith("Metadata_") else f"Metadata_{label}")
    failures = _failures(layout)

    body = []
    if reduced is not None and "Metadata_Well" in reduced.columns:
        maps = []
        counts = reduced.groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_Object_Count"].sum()
        for plate in sorted(reduced["Metadata_Plate"].astype(str).unique()):
            per_well = {w: float(v) for (p, w), v in counts.items() if str(p) == plate}
            maps.append(_img(plate_map(per_well, plate, "cells per well", "cells"), f"cells per well, plate {plate}"))
        body.append("<h2>Cells per well</h2>" + "".join(maps))
    else:
        missing.append("plate maps")
        body.append("<h2>Cells per well</h2>" + _missing("profiles", "run dpbeam aggregate"))
    failed_sites: dict[tuple[str, str], int] = {}
    for record in failures:
        match = re.fullmatch(r"([^/]+)/(.+)-([^-]+)", str(record.get("item", "")))
        if match:
            failed_sites[(match.group(1), match.group(2))] = failed_sites.get((match.group(1), match.group(2)), 0) + 1
    section = f"<h2>Failures</h2><p>{len(failures)} record(s) in the dead-letter files of the last runs.</p>"
    for plate in sorted({p for p, _ in failed_sites}):
        section += _img(plate_map({w: n for (p, w), n in failed_sites.items() if p == plate}, plate,
                                  "failed records per well", "records"), f"failures, plate {plate}")
    if failures:
        section += _table(pd.DataFrame(failures[:50])[["stage", "item", "reason"]])
    body.append(section)

    pictures = sorted(layout.intensities_dir.glob("*/*_illumination_*.png"), key=str) \
        if layout.intensities_dir.exists() else []
    if pictures:
        first_plate = pictures[0].parent.name
        body.append(f"<h2>Illumination functions</h2><p>plate {html.escape(first_plate)}</p><div class='grid'>" + "".join(
            _img(p.read_bytes(), p.name) for p in pictures if p.parent.name == first_plate) + "</div>")
    else:
        missing.append("illumination functions")
        body.append("<h2>Illumination functions</h2>" + _missing("illumination functions", "run dpbeam prepare"))
    montage = layout.single_cells_dir / "montage.png"
    body.append("<h2>Single-cell crops</h2>" + (_img(montage.read_bytes(), "crop montage") if montage.exists()
                                                 else _missing("crop montage", "run dpbeam export-sc")))
    if not montage.exists():
        missing.append("crop montage")
    curves = layout.logs_dir / "training_curves.png"
    body.append("<h2>Training</h2>" + (_img(curves.read_bytes(), "training curves") if curves.exists()
                                        else _missing("training curves", "this experiment was not trained here "
                                                                         "(dpbeam train writes them)")))
    if selected is not None and len(selected) >= 3:
        body.append("<h2>Profiles</h2>" + _img(embedding(selected, label_column), "profile embedding"))
    else:
        missing.append("embedding")
        body.append("<h2>Profiles</h2>" + _missing("profiles to embed", "run dpbeam aggregate"))
    activity = _read_parquet(evaluation_dir(layout) / "phenotypic_activity.parquet")
    if activity is not None:
        shown = activity[[c for c in activity.columns if c.startswith("Metadata_")] +
                         ["mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"]]
        plot = evaluation_dir(layout) / "phenotypic_activity.png"
        body.append("<h2>Phenotypic activity (mAP)</h2>" + (_img(plot.read_bytes(), "mAP plot") if plot.exists()
                                                            else "") + _table(shown))
        consistent = _read_parquet(evaluation_dir(layout) / "consistency.parquet")
        if consistent is not None:
            body.append("<h2>Consistency (mAP)</h2>" + _img((evaluation_dir(layout) / "consistency.png").read_bytes(),
                                                            "consistency plot") + _table(consistent))
    else:
        missing.append("evaluation")
        body.append("<h2>Phenotypic activity (mAP)</h2>" + _missing("evaluation", "run dpbeam evaluate"))
    features_manifest = layout.features_dir / "_manifest.json"
    model = json.loads(features_manifest.read_text()) if features_manifest.exists() else {}
    provenance = {"config": config.source, "config fingerprint (SHA-256)": config.fingerprint,
                  "model": model.get("model"), "feature layer": model.get("feature_layer"),
                  "checkpoint SHA-256": model.get("checkpoint_sha256"), "report written":
                  time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **_versions()}
    body.append("<h2>Provenance</h2>" + _table(pd.DataFrame(
        {"item": list(provenance), "value": [str(v) for v in provenance.values()]})))
    return _page(str(layout.root), body), missing


def _page(root: str, sections: Sequence[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%;display:block;margin:0.5em 0}h2{border-bottom:1px solid #ccc;margin-top:1.6em}"
             ".grid img{display:inline-block;max-width:49%;vertical-align:top}.missing{color:#8a6d00;background:#fff8e1;padding:0.4em}table.data{border-collapse:collapse;"
             "font-size:0.85em}table.data td,table.data th{padding:2px 8px;border-bottom:1px solid #eee}")
    script = ("<script>window.addEventListener('load',function(){var i=document.images,n=0;"
              "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)n++;}"
              "document.body.setAttribute('data-images-loaded',n+'/'+i.length);});</script>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dpbeam report: {html.escape(root)}</title>"
            f"<style>{style}</style></head><body><h1>dpbeam report</h1><p>{html.escape(root)}</p>"
            + "".join(sections) + script + "</body></html>")
