"""Are treatments distinguishable? Mean average precision (mAP) with copairs, as the JUMP papers measure it.

- **Phenotypic activity**: for each treatment, its replicates (wells, or sites for small projects) are
  queries ranked against each other and the controls; a treatment whose replicates find each other before
  the controls is active. copairs' recipe: a profile's positives share the treatment (controls never count
  as positives of each other: each control gets its own reference index), its negatives are the profiles of
  other treatments that are controls.
- **Consistency** (when ``evaluate.annotation_column`` names e.g. a mechanism of action): the treatments'
  consensus profiles are queries ranked by shared annotation against treatments with other annotations.

``mean_average_precision`` with a permutation p-value (``null_size`` draws) and the FDR-corrected one
come from copairs unchanged; their columns keep copairs' names.
"""

from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np
import pandas as pd

from dpcore.profiles import feature_columns

logger = logging.getLogger(__name__)

REFERENCE_INDEX = "Metadata_reference_index"


class EvaluationError(ValueError):
    """The profiles cannot be evaluated as configured; the message says what is missing."""


def phenotypic_activity(profiles: pd.DataFrame, label: str, control: str, null_size: int, threshold: float,
                        seed: int, distance: str = "cosine") -> pd.DataFrame:
    """mAP of each non-control treatment's replicates against the controls (copairs)."""
    from copairs import map as copairs_map  # noqa: PLC0415 -- copairs loads its own stack only here

    _require(profiles, [label])
    meta = profiles[[c for c in profiles.columns if c.startswith("Metadata_")]].reset_index(drop=True).copy()
    controls = meta[label].astype(str) == str(control)
    if not controls.any():
        raise EvaluationError(f"no control profiles ({label} == {control!r}) to rank the treatments against")
    if (~controls).sum() == 0:
        raise EvaluationError(f"every profile is a control ({label} == {control!r}): nothing to evaluate")
    replicates = meta.loc[~controls, label].value_counts()
    if (replicates < 2).all():
        raise EvaluationError("each treatment has one profile only: mAP needs replicates (evaluate a finer level, "
                              "e.g. evaluate.level \"sites\" with aggregate.level \"sites\")")
    meta[REFERENCE_INDEX] = np.where(controls, np.arange(len(meta)), -1)
    features = profiles[feature_columns(profiles.columns)].to_numpy(np.float64)
    ap = _copairs(copairs_map.average_precision, meta, features, pos_sameby=[label, REFERENCE_INDEX], pos_diffby=[],
                                       neg_sameby=[], neg_diffby=[label, REFERENCE_INDEX], distance=distance,
                                       progress_bar=False)
    ap = ap[~ap[label].astype(str).eq(str(control))]
    result = copairs_map.mean_average_precision(ap, [label], null_size=null_size, threshold=threshold, seed=seed,
                                                progress_bar=False)
    return _finish(result)


def consistency(treatments: pd.DataFrame, annotation: str, label: str, control: str | None, null_size: int,
                threshold: float, seed: int, distance: str = "cosine") -> pd.DataFrame:
    """mAP of treatments sharing ``annotation`` against treatments with another annotation (copairs)."""
    from copairs import map as copairs_map  # noqa: PLC0415

    _require(treatments, [annotation])
    kept = treatments if control is None or label not in treatments.columns else \
        treatments[treatments[label].astype(str) != str(control)]
    kept = kept[kept[annotation].notna()].reset_index(drop=True)
    counts = kept[annotation].value_counts()
    if (counts < 2).all():
        raise EvaluationError(f"no value of {annotation} is shared by two treatments: consistency needs that")
    meta = kept[[c for c in kept.columns if c.startswith("Metadata_")]]
    features = kept[feature_columns(kept.columns)].to_numpy(np.float64)
    ap = _copairs(copairs_map.average_precision, meta, features, pos_sameby=[annotation], pos_diffby=[], neg_sameby=[],
                                       neg_diffby=[annotation], distance=distance, progress_bar=False)
    result = copairs_map.mean_average_precision(ap, [annotation], null_size=null_size, threshold=threshold,
                                                seed=seed, progress_bar=False)
    return _finish(result)


def _copairs(call, *args, **kwargs):
    """A copairs call whose refusals (no positive or negative pairs) become an EvaluationError."""
    from copairs.matching import UnpairedException  # noqa: PLC0415

    try:
        return call(*args, **kwargs)
    except UnpairedException as error:
        raise EvaluationError(f"copairs found no pairs to rank ({error}): each group needs replicates, and "
                              f"other groups to rank them against") from None


def _require(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(f"the profiles have no column {', '.join(missing)} (they have "
                              f"{', '.join(c for c in frame.columns if c.startswith('Metadata_'))})")


def _finish(result: pd.DataFrame) -> pd.DataFrame:
    result = result.reset_index(drop=True)
    result["-log10(p)"] = -np.log10(result["corrected_p_value"].clip(lower=1e-300))
    return result.sort_values("mean_average_precision", ascending=False, kind="stable").reset_index(drop=True)


def map_plot(result: pd.DataFrame, key: str, title: str, threshold: float) -> bytes:
    """mAP against -log10(corrected p), one point per treatment (or annotation), the significant ones filled."""
    from dpcore.charts import _figure, _png  # noqa: PLC0415

    figure = _figure(6.0, 4.5)
    ax = figure.subplots()
    significant = result["below_corrected_p"].astype(bool)
    ax.scatter(result.loc[significant, "mean_average_precision"], result.loc[significant, "-log10(p)"],
               color="#1f77b4", label=f"corrected p < {threshold:g}")
    ax.scatter(result.loc[~significant, "mean_average_precision"], result.loc[~significant, "-log10(p)"],
               facecolors="none", edgecolors="#7f7f7f", label="not significant")
    ax.axhline(-np.log10(threshold), color="#b00020", linewidth=0.8, linestyle="--")
    for _, row in result.head(15).iterrows():
        ax.annotate(str(row[key])[:24], (row["mean_average_precision"], row["-log10(p)"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean average precision")
    ax.set_ylabel("-log10(corrected p)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(figure)


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
