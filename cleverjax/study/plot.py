"""Figure-3-style plots of a study table: KL against N per method, a panel per delta."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .._plotting import _STYLE
from .spec import StudyError

_BAYES_STYLE = dict(color="tab:green", linestyle="-")


def read_table(folder: str | os.PathLike) -> pd.DataFrame:
    """The table of a finished study folder.

    Raises:
        StudyError: if the folder has no ``results.parquet``.
    """
    path = Path(folder) / "results.parquet"
    if not path.is_file():
        raise StudyError(f"{path}: not found; run `cleverjax study run STUDY.toml --out {folder}`")
    return pd.read_parquet(path)


def plot_study(
    table: pd.DataFrame, path: str | os.PathLike | None = None, *, exact: bool = False
) -> Figure:
    """KL against annotations per image for every method: one panel per (truth, delta).

    Each line is the mean over seeds (and calibration settings); the band spans the
    smallest to the largest seed's value.

    Args:
        table: a study table (:func:`run_study` or :func:`read_table`).
        path: if given, save a PNG there.
        exact: keyword-only; plot the exact KL instead of the paper's clipped one.

    Returns:
        The matplotlib figure.
    """
    column = "kl_exact" if exact else "kl"
    truths = list(dict.fromkeys(table["truth"]))
    deltas = sorted(table["delta"].unique())
    methods = list(dict.fromkeys(table["method"]))
    fig = Figure(figsize=(3.2 * len(deltas) + 1.5, 3.0 * len(truths) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(truths), len(deltas), squeeze=False, sharex=True))
    for i, truth in enumerate(truths):
        for j, delta in enumerate(deltas):
            ax = axes[i, j]
            panel = table.loc[(table["truth"] == truth) & (table["delta"] == delta)]
            for method in methods:
                rows = panel.loc[panel["method"] == method]
                stats = rows.groupby("num_annotations")[column].agg(["mean", "min", "max"])
                style = _STYLE.get(method, _BAYES_STYLE if method == "Bayes" else {})
                ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=method, **style)
                if len(rows["seed"].unique()) > 1:
                    ax.fill_between(
                        stats.index,
                        stats["min"],
                        stats["max"],
                        alpha=0.15,
                        color=style.get("color"),
                    )
            ax.set_xscale("log")
            ax.set_title(f"{truth}, delta = {delta:g}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if i == len(truths) - 1:
                ax.set_xlabel("annotations per image N")
            if j == 0:
                ax.set_ylabel("exact KL" if exact else "KL(gt || estimate)")
    axes[0, -1].legend(fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
