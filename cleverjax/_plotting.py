"""Figures (matplotlib's object API: no global state, any backend)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from ._experiments import FIGURE3_METHODS, Figure3

_STYLE = {
    "GT": dict(color="black", linestyle="-"),
    "GT+CB": dict(color="black", linestyle="--"),
    "SPA": dict(color="tab:red", linestyle="-"),
    "SPA+CB": dict(color="tab:red", linestyle="--"),
    "SPA+BC": dict(color="tab:orange", linestyle="-"),
    "CleverLabel": dict(color="tab:blue", linestyle="-"),
    "CleverLabel+GT delta": dict(color="tab:blue", linestyle=":"),
    "SPA+CB (mu=0.25)": dict(color="tab:pink", linestyle="--"),
    "Bayesian model": dict(color="tab:green", linestyle="-"),
}


def plot_figure3(
    result: Figure3, path: str | os.PathLike | None = None, *, title: str = ""
) -> Figure:
    """Figure-3-style plot: KL against annotations per image (log x), and against budget.

    Left: median over deltas of the mean KL for each method. Right: the same against the
    annotation budget for each speedup S (proposal methods pay N / S).

    Args:
        result: output of :func:`figure3`.
        path: if given, save a PNG there.
        title: keyword-only; figure title.

    Returns:
        The matplotlib figure.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax_budget = fig.subplots(1, 2)
    med = result.medians
    for method in FIGURE3_METHODS:
        if method in med:
            ax.plot(
                med.index,
                med[method],
                marker="o",
                markersize=3,
                label=method,
                **_STYLE.get(method, {}),
            )
    ax.set_xscale("log")
    ax.set_xlabel("annotations per image N")
    ax.set_ylabel("KL(gt || estimate), median over deltas")
    ax.set_title("(a) label quality")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")

    budget = result.budget
    speedups = sorted(budget["speedup"].unique())
    markers = ["o", "s", "^", "D", "v"]
    fades = np.linspace(1, 0.45, len(speedups))
    for method in ("GT", "SPA", "CleverLabel"):
        for i, s in enumerate(speedups):
            rows = budget[(budget["method"] == method) & (budget["speedup"] == s)]
            if rows.empty or (method == "GT" and i > 0):
                continue
            label = method if method == "GT" else f"{method}, S={s:g}"
            style = dict(_STYLE.get(method, {}))
            style["alpha"] = 1.0 if method == "GT" else float(fades[i])
            ax_budget.plot(
                rows["budget"],
                rows["kl"],
                marker=markers[i % len(markers)],
                markersize=3,
                label=label,
                **style,
            )
    ax_budget.set_xscale("log")
    ax_budget.set_xlabel("annotation budget per image (N / S with proposals)")
    ax_budget.set_ylabel("KL(gt || estimate)")
    ax_budget.set_title("(b) budget")
    ax_budget.legend(fontsize=7, ncol=2)
    ax_budget.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig
