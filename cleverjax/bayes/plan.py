"""Planning a calibration set: how many calibration images pin delta down, answered by
simulation with the SPA engine and the exact posterior of delta."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import PRNGKeyArray

from .. import _checks
from .._checks import ArrayIn
from .._correction import calibration_sample
from .._random import as_typed_key
from .._spa import propose, simulate_counts
from .exact import check_widening, exact_delta_posterior
from .fitting import fit
from .likelihood import Prior


class CalibrationPlan(NamedTuple):
    """Result of :func:`plan_calibration`.

    Attributes:
        table: one row per calibration size: ``calibration_images``, the median and 90th
            percentile of the credible interval's half-width over replicates,
            ``rmse`` of the posterior mean, and ``coverage`` (share of intervals that
            contain the true delta; the simulated campaigns are analysed with the prior
            held fixed, where no widening is needed, so it lies above ``level`` when the
            intervals are widened).
        recommended: the smallest size whose 90th-percentile half-width is at most
            ``target``, or ``None`` if no size reaches it.
        target: the half-width asked for.
        widening: the factor the intervals were widened by for a fitted prior's
            response to delta (``delta_widening`` of the pilot fit, or as given).
    """

    table: pd.DataFrame
    recommended: int | None
    target: float
    widening: float = 1.0


def plan_calibration(
    key: PRNGKeyArray,
    p: ArrayIn,
    *,
    delta: float,
    target: float,
    sizes: Sequence[int] = (25, 50, 100, 200, 400),
    num_annotations: int = 10,
    calibration_annotations: int = 10,
    accuracy: float = 0.9,
    one_star: float = 0.99,
    replicates: int = 10,
    level: float = 0.9,
    prior: Prior | None = None,
    widening: float | None = None,
) -> CalibrationPlan:
    """How many calibration images pin delta down to +-``target``? Answered by simulation.

    For each candidate size and replicate, the SPA engine simulates a campaign on the
    ground truth ``p`` (proposals of the given accuracy, ``num_annotations`` biased
    annotations per image) and a calibration set (``calibration_annotations`` unbiased
    annotations on that many random images). The credible interval of delta comes from
    the calibration images alone (:func:`exact_delta_posterior` with
    ``delta_from="calibration"``: what the calibration data guarantee without trusting
    the prior family), under a prior fitted once on a pilot simulation (or ``prior``).

    A campaign's own :func:`fit` learns the prior with delta, and the prior's response
    to delta amplifies the calibration data's error (:func:`fit`'s ``delta_widening``),
    so each interval is widened by the pilot fit's ``delta_widening``: the half-widths
    are those the campaign's fit will report. With ``prior`` given, pass the widening of
    the fit it came from (default 1: the prior taken as known).

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground truth, e.g. a preset or a pilot data set.
        delta: keyword-only; the delta to plan for.
        target: keyword-only; wanted half-width of the credible interval.
        sizes: keyword-only; candidate numbers of calibration images.
        num_annotations: keyword-only; biased annotations per image.
        calibration_annotations: keyword-only; unbiased annotations per calibration image.
        accuracy: keyword-only; proposer accuracy.
        one_star: keyword-only; 1*.
        replicates: keyword-only; simulated campaigns per size.
        level: keyword-only; credible level.
        prior: keyword-only; the label prior; by default fitted on a pilot simulation.
        widening: keyword-only; factor (>= 1) by which delta's intervals are widened;
            by default the pilot fit's ``delta_widening``, or 1 with ``prior`` given.

    Returns:
        A :class:`CalibrationPlan`.

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=2000)
        >>> plan = cj.plan_calibration(jax.random.key(1), p, delta=0.2, target=0.05,
        ...                            sizes=(50, 200), replicates=1)
        >>> list(plan.table.columns)[:2]
        ['calibration_images', 'median_half_width']
    """
    p_arr = _checks.check_simplex_rows("p", _checks.as_float_array("p", p, ndim=2))
    n = p_arr.shape[0]
    if not target > 0:
        raise ValueError(f"`target` must be > 0; got {target}")
    sizes = sorted(int(m) for m in sizes)
    if not sizes or sizes[0] < 3 or sizes[-1] > n:
        raise ValueError(f"`sizes` must be ints in [3, {n}] (the number of images); got {sizes}")
    replicates = _checks.positive_int("replicates", replicates)
    if widening is not None:
        widening = check_widening(widening)
    k_pilot, k_fit, k_runs = jax.random.split(as_typed_key(key), 3)

    def campaign(k, size):
        k_prop, k_sim, k_cal = jax.random.split(k, 3)
        rho = propose(k_prop, p_arr, accuracy=accuracy)
        biased = simulate_counts(
            k_sim, p_arr, rho, num_annotations=num_annotations, delta=delta, one_star=one_star
        )
        cal = calibration_sample(
            k_cal, p_arr, num_images=size, num_annotations=calibration_annotations
        )
        unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
        return biased, rho, unbiased

    if prior is None:
        # A non-converged pilot fit warns (ConvergenceWarning) rather than being hidden.
        b, r, u = campaign(k_pilot, sizes[-1])
        pilot = fit(
            k_fit,
            b,
            r,
            unbiased_counts=u,
            one_star=one_star,
            num_ppc_replicates=0,
            num_interval_draws=2,
            check_model=False,  # simulated under SPA: nothing to check
        )
        prior = pilot.prior
        widening = pilot.delta_widening if widening is None else widening
    widening = 1.0 if widening is None else widening
    rows = []
    for i, size in enumerate(sizes):
        widths, errors, covered = [], [], []
        for j in range(int(replicates)):
            b, r, u = campaign(jax.random.fold_in(k_runs, i * 100003 + j), size)
            post = exact_delta_posterior(
                b,
                r,
                unbiased_counts=u,
                prior=prior,
                one_star=one_star,
                level=level,
                delta_from="calibration",
                widening=widening,
            )
            lo, hi = post.interval
            widths.append((hi - lo) / 2)
            errors.append(post.mean - delta)
            covered.append(lo <= delta <= hi)
        rows.append(
            dict(
                calibration_images=size,
                median_half_width=float(np.median(widths)),
                q90_half_width=float(np.quantile(widths, 0.9)),
                rmse=float(np.sqrt(np.mean(np.square(errors)))),
                coverage=float(np.mean(covered)),
            )
        )
    table = pd.DataFrame(rows)
    ok = table[table["q90_half_width"] <= target]
    recommended = int(ok["calibration_images"].iloc[0]) if len(ok) else None
    return CalibrationPlan(table, recommended, float(target), float(widening))
