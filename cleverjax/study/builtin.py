"""Built-in studies: the paper's Figure 3a grid, run by the same resumable machinery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._experiments import FIGURE3_METHODS, TABLE2_METHODS, Figure3, _medians, budget_curves
from .spec import Study, parse_study

FIGURE3_DELTAS = (0.1, 0.2, 0.4, 0.6)
FIGURE3_ANNOTATIONS = (1, 3, 5, 10, 20, 50, 100)


def figure3_study(
    truth: Mapping[str, Any],
    *,
    deltas: Sequence[float] = FIGURE3_DELTAS,
    num_annotations: Sequence[int] = FIGURE3_ANNOTATIONS,
    seeds: Sequence[int] = (0,),
    accuracy: float = 0.9,
    bayes: bool = False,
    base: str | Path = ".",
) -> Study:
    """The paper's Figure 3a (and Table 2's label ablation) as a study.

    Methods: Figure 3a's seven, CB with mu = 0.25 (Table 2), and the Bayesian model when
    ``bayes``. Calibration, 1* and mu are the paper's (100 images x 10 annotations, 0.99,
    0.75).

    Args:
        truth: a study file's truth table, e.g. ``{"counts": "cifar10h-counts.npy"}``.
        deltas: keyword-only; true acceptance offsets.
        num_annotations: keyword-only; annotations per image N.
        seeds: keyword-only; replicate seeds.
        accuracy: keyword-only; proposer accuracy.
        bayes: keyword-only; also fit the Bayesian model on every cell.
        base: keyword-only; folder a relative counts path is resolved against.

    Returns:
        A :class:`Study`, checked like a study file.
    """
    methods = [*FIGURE3_METHODS, "SPA+CB (mu=0.25)"] + (["Bayes"] if bayes else [])
    data = {
        "truth": dict(truth),
        "deltas": [float(d) for d in deltas],
        "annotations": [int(n) for n in num_annotations],
        "seeds": [int(s) for s in seeds],
        "methods": methods,
        "accuracy": float(accuracy),
    }
    return parse_study(data, source="reproduce fig3", base=Path(base))


def figure3_result(table: pd.DataFrame, seconds: float) -> Figure3:
    """A :class:`cleverjax.Figure3` from the table of :func:`figure3_study`'s run."""
    scored = table.loc[table["method"] != "Bayes"]
    medians_all = _medians(scored)
    return Figure3(
        table=table,
        medians=medians_all.loc[:, list(FIGURE3_METHODS)],
        ablation=medians_all.loc[:, list(TABLE2_METHODS)],
        budget=budget_curves(medians_all),
        seconds=seconds,
    )
