"""The paper's experiments: Figure 3a, the Table 2 ablation and budget curves.

The whole grid (deltas x annotation counts x seeds x methods) is simulated and scored in
a few compiled calls, with no Python loop over images or grid cells.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import PRNGKeyArray
from tqdm import tqdm

from . import _checks
from ._checks import ArrayIn
from ._correction import (
    _bias_correction,
    _class_blending,
    _cleverlabel,
    _soft,
    calibration_sample,
    estimate_class_matrix,
)
from ._metrics import _kl_paper
from ._random import as_typed_key
from ._spa import propose, simulate_sweep

FIGURE3_METHODS = (
    "GT",
    "GT+CB",
    "SPA",
    "SPA+CB",
    "SPA+BC",
    "CleverLabel",
    "CleverLabel+GT delta",
)
"""Methods of the paper's Figure 3a, in plotting order."""

TABLE2_METHODS = (
    "SPA+CB",
    "SPA+CB (mu=0.25)",
    "SPA+BC",
    "CleverLabel",
    "CleverLabel+GT delta",
)
"""Label-level ablation of the paper's Table 2: only CB, CB with mu = 0.25, only BC,
CleverLabel, CleverLabel with the true delta."""

_ALL_METHODS = (*FIGURE3_METHODS, "SPA+CB (mu=0.25)")
_WITH_PROPOSALS = (
    "SPA",
    "SPA+CB",
    "SPA+CB (mu=0.25)",
    "SPA+BC",
    "CleverLabel",
    "CleverLabel+GT delta",
)


class Figure3(NamedTuple):
    """Result of :func:`figure3`.

    Attributes:
        table: long table, one row per (method, delta, num_annotations, seed) with ``kl``,
            the mean KL(gt || estimate) over images (the paper's clipped KL).
        medians: ``num_annotations`` x method: median over deltas of the mean over seeds
            (the curves of Figure 3a).
        ablation: ``num_annotations`` x Table 2 method, medians as above.
        budget: long table of the budget curves (see :func:`budget_curves`).
        seconds: wall time of the whole run, compilation included.
    """

    table: pd.DataFrame
    medians: pd.DataFrame
    ablation: pd.DataFrame
    budget: pd.DataFrame
    seconds: float


@jax.jit
def _grid_kl(p, rho, biased, unbiased, class_matrices, deltas, one_star, mu, corr_delta):
    """Mean KL per (delta, size, seed, method) for stacked counts.

    biased: (D, M, S, n, K); unbiased: (M, S, n, K); class_matrices: (S, K, K).
    """

    def cell(b, u, matrix, true_delta):
        gt = _soft(u)
        spa = _soft(b)
        bc = _bias_correction(b, rho, corr_delta, one_star)
        estimates = (
            gt,
            _class_blending(gt, matrix, mu),
            spa,
            _class_blending(spa, matrix, mu),
            bc,
            _cleverlabel(b, rho, matrix, corr_delta, one_star, mu, None),
            _cleverlabel(b, rho, matrix, true_delta, one_star, mu, None),
            _class_blending(spa, matrix, 0.25),
        )
        return jnp.stack([jnp.mean(_kl_paper(p, e)) for e in estimates])

    over_seeds = jax.vmap(cell, in_axes=(0, 0, 0, None))
    over_sizes = jax.vmap(over_seeds, in_axes=(0, 0, None, None))
    return jax.vmap(over_sizes, in_axes=(0, None, None, 0))(
        biased, unbiased, class_matrices, deltas
    )


def figure3(
    key: PRNGKeyArray,
    p: ArrayIn,
    *,
    accuracy: float = 0.9,
    deltas: Sequence[float] = (0.1, 0.2, 0.4, 0.6),
    num_annotations: Sequence[int] = (1, 3, 5, 10, 20, 50, 100),
    num_seeds: int = 1,
    one_star: float = 0.99,
    mu: float = 0.75,
    correction_delta: float = 0.1,
    calibration_images: int = 100,
    calibration_annotations: int = 10,
    speedups: Sequence[float] = (1.0, 2.5, 10.0),
    progress: bool = False,
) -> Figure3:
    """Reproduce the paper's Figure 3a (and Table 2's label ablation) on a ground truth.

    For every delta, annotation count N and seed: SPA-biased counts (proposals from a
    simulated proposer of the given accuracy), unbiased counts (no proposals), and a
    class-blending matrix from ``calibration_images`` images with
    ``calibration_annotations`` unbiased annotations each (the paper's protocol). Methods:
    GT and GT+CB (no proposals), SPA and SPA+CB (raw biased labels), SPA+BC, CleverLabel
    (BC with ``correction_delta``, then CB) and CleverLabel+GT delta (BC with the true
    delta); Table 2 adds CB with ``mu = 0.25``.

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground-truth label distributions (e.g. normalised
            CIFAR-10H counts, or :func:`sample_ground_truth`).
        accuracy: keyword-only; proposer accuracy.
        deltas: keyword-only; true acceptance offsets to simulate.
        num_annotations: keyword-only; annotation counts N.
        num_seeds: keyword-only; independent replicates (proposals are shared).
        one_star: keyword-only; 1* used to simulate and correct.
        mu: keyword-only; CB weight.
        correction_delta: keyword-only; the delta BC assumes (paper: 0.1).
        calibration_images: keyword-only; images for the class-blending matrix.
        calibration_annotations: keyword-only; unbiased annotations per calibration image.
        speedups: keyword-only; speedups S for the budget curves.
        progress: keyword-only; show a progress bar.

    Returns:
        A :class:`Figure3`.

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=300)
        >>> fig = cj.figure3(jax.random.key(1), p, num_annotations=(1, 10))
        >>> fig.medians.shape
        (2, 7)
    """
    start = time.perf_counter()
    p_arr = _checks.check_simplex_rows("p", _checks.as_float_array("p", p, ndim=2))
    deltas_arr = _checks.as_float_array("deltas", list(deltas), ndim=1)
    sizes = _checks.as_int_array("num_annotations", list(num_annotations), ndim=1)
    if deltas_arr.shape[0] == 0 or sizes.shape[0] == 0:
        raise ValueError("`deltas` and `num_annotations` must not be empty")
    num_seeds = _checks.positive_int("num_seeds", num_seeds)
    stages = tqdm(total=4, desc="figure3", disable=not progress, leave=False)
    k_prop, k_biased, k_unbiased, k_cal = jax.random.split(as_typed_key(key), 4)
    rho = propose(k_prop, p_arr, accuracy=accuracy)
    stages.update()
    biased = simulate_sweep(
        k_biased,
        p_arr,
        rho,
        delta=deltas_arr,
        num_annotations=sizes,
        num_seeds=num_seeds,
        one_star=one_star,
    )
    unbiased = simulate_sweep(
        k_unbiased,
        p_arr,
        jnp.zeros_like(rho),
        delta=jnp.zeros(1),
        num_annotations=sizes,
        num_seeds=num_seeds,
        one_star=1.0,
    )[0]
    stages.update()
    matrices = jnp.stack(
        [
            estimate_class_matrix(
                calibration_sample(
                    jax.random.fold_in(k_cal, s),
                    p_arr,
                    num_images=calibration_images,
                    num_annotations=calibration_annotations,
                ).counts
            )
            for s in range(num_seeds)
        ]
    )
    stages.update()
    dtype = p_arr.dtype
    kl = _grid_kl(
        p_arr,
        rho,
        biased,
        unbiased,
        matrices,
        deltas_arr,
        jnp.asarray(one_star, dtype),
        jnp.asarray(mu, dtype),
        jnp.asarray(correction_delta, dtype),
    )
    kl = np.asarray(jax.block_until_ready(kl))
    stages.update()
    stages.close()

    d_idx, m_idx, s_idx, k_idx = np.meshgrid(*(np.arange(n) for n in kl.shape), indexing="ij")
    table = pd.DataFrame(
        {
            "method": np.asarray(_ALL_METHODS)[k_idx.ravel()],
            "delta": np.asarray(deltas_arr)[d_idx.ravel()],
            "num_annotations": np.asarray(sizes)[m_idx.ravel()],
            "seed": s_idx.ravel(),
            "kl": kl.ravel(),
        }
    )
    medians_all = _medians(table)
    return Figure3(
        table=table,
        medians=medians_all[list(FIGURE3_METHODS)],
        ablation=medians_all[list(TABLE2_METHODS)],
        budget=budget_curves(medians_all, speedups=speedups),
        seconds=time.perf_counter() - start,
    )


def _medians(table: pd.DataFrame) -> pd.DataFrame:
    per_delta = table.groupby(["method", "num_annotations", "delta"])["kl"].mean()
    medians = per_delta.groupby(["method", "num_annotations"]).median().unstack("method")
    medians.columns.name = None
    return medians


def budget_curves(
    medians: pd.DataFrame, *, speedups: Sequence[float] = (1.0, 2.5, 10.0)
) -> pd.DataFrame:
    """KL against annotation budget for several proposal speedups S.

    A method that shows proposals pays ``N / S`` per image; one without (GT, GT+CB) pays
    ``N`` whatever S is. Returns a long table with columns ``speedup``, ``method``,
    ``num_annotations``, ``budget`` and ``kl``.
    """
    rows = []
    for s in speedups:
        if not s > 0:
            raise ValueError(f"`speedups` must be > 0; got {s}")
        for method in medians.columns:
            for n, kl in medians[method].items():
                cost = n / s if method in _WITH_PROPOSALS else float(n)
                rows.append((float(s), method, int(n), cost, float(kl)))
    return pd.DataFrame(rows, columns=["speedup", "method", "num_annotations", "budget", "kl"])


class Finding(NamedTuple):
    """One qualitative finding of the paper, checked on a :class:`Figure3` result."""

    claim: str
    holds: bool
    evidence: str


def check_findings(result: Figure3) -> list[Finding]:
    """Check the paper's qualitative findings on a Figure 3 run.

    1. More annotations help (CleverLabel's KL falls from the smallest to the largest N).
    2. CB is best at 1 annotation (SPA+CB is at least as good as SPA, SPA+BC and
       CleverLabel at the smallest N).
    3. BC helps from about 20 annotations (SPA+BC beats SPA for every N >= 20).
    4. The true delta matters more at large delta and N (the gain of CleverLabel+GT delta
       over CleverLabel at the largest delta and N exceeds that at the smallest).
    """
    med = result.medians
    n_min, n_max = med.index.min(), med.index.max()
    out = []
    cl = med["CleverLabel"]
    out.append(
        Finding(
            "more annotations help",
            bool(cl[n_max] < cl[n_min]),
            f"CleverLabel KL {cl[n_min]:.4f} at N={n_min}, {cl[n_max]:.4f} at N={n_max}",
        )
    )
    first = med.loc[n_min, ["SPA", "SPA+CB", "SPA+BC", "CleverLabel"]]
    # At N = 1, BC returns the single label unchanged, so CleverLabel ties with SPA+CB.
    out.append(
        Finding(
            "CB is best at 1 annotation",
            bool(first["SPA+CB"] <= first.min()),
            f"at N={n_min}: " + ", ".join(f"{k} {v:.4f}" for k, v in first.items()),
        )
    )
    large = med[med.index >= 20]
    holds = bool(len(large) > 0 and (large["SPA+BC"] < large["SPA"]).all())
    out.append(
        Finding(
            "BC helps from about 20 annotations",
            holds,
            "; ".join(
                f"N={n}: SPA+BC {r['SPA+BC']:.4f} vs SPA {r['SPA']:.4f}"
                for n, r in large.iterrows()
            ),
        )
    )
    t = result.table.groupby(["method", "delta", "num_annotations"])["kl"].mean()
    d_min, d_max = result.table["delta"].min(), result.table["delta"].max()
    gain_small = t["CleverLabel", d_min, n_min] - t["CleverLabel+GT delta", d_min, n_min]
    gain_large = t["CleverLabel", d_max, n_max] - t["CleverLabel+GT delta", d_max, n_max]
    out.append(
        Finding(
            "the GT delta matters more at large delta and N",
            bool(gain_large > gain_small),
            f"KL gain from the true delta: {gain_small:.4f} at delta={d_min:g}, "
            f"N={n_min}; {gain_large:.4f} at delta={d_max:g}, N={n_max}",
        )
    )
    return out
