"""The exact posterior of delta on a grid: every label distribution integrated out in
closed form and delta by quadrature, the reference that SVI is checked against."""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from .. import _checks
from .._checks import ArrayIn
from .._programs import stored_call
from .data import (
    LivePairs,
    SPAData,
    calibrated_rows,
    entry_pairs,
    numpy_rng,
    pad,
    prepare,
    restrict,
)
from .likelihood import (
    Prior,
    live_log_weights,
    log_marginal,
    row_part,
    t_basis,
    t_part_given,
)
from .model import DEFAULT_DELTA_PRIOR


class DeltaPosterior(NamedTuple):
    """The exact posterior of delta on a grid (the collapsed path).

    Attributes:
        grid: ``(points,)`` values of delta.
        weights: ``(points,)`` posterior probability of each grid cell (sums to 1).
        mean: posterior mean.
        interval: equal-tailed credible interval at ``level``.
        log_evidence: log marginal likelihood of the data given the prior (up to the
            grid's quadrature error).
    """

    grid: Float[Array, " points"]
    weights: Float[Array, " points"]
    mean: float
    interval: tuple[float, float]
    log_evidence: float


@functools.partial(jax.jit, static_argnames=("num_terms",))
def log_likelihood_grid(
    data: SPAData, prior: Prior, grid: Array, one_star: Array, pairs: LivePairs, *, num_terms: int
) -> Float[Array, " points"]:
    """Total log likelihood of ``data`` at every delta of ``grid`` (1* fixed), with the
    weights of only the (c, N) pairs that its entries use (``pairs``, see
    :func:`cleverjax.bayes.data.entry_pairs`). The data are an argument, so one compiled
    program serves every data set of the same padded shape."""
    rows = row_part(data, prior)  # the delta-free parts, once for every point
    basis = t_basis(data.table, prior, num_terms)

    def one(d):
        log_w = live_log_weights(pairs, data.table.rho, d, one_star, num_terms)
        t = t_part_given(data.table, prior, basis, log_w)
        return jnp.sum(data.weight * logsumexp(log_marginal(data, rows, t), axis=-1))

    # Points in batches as large as a bounded working set allows (few rows: all at once).
    per_point = data.table.num_entries * prior.weights.shape[1] * num_terms
    batch = int(max(1, min(grid.shape[0], GRID_BATCH_ELEMENTS // max(per_point, 1))))
    return jax.lax.map(one, grid, batch_size=batch)


GRID_BATCH_ELEMENTS = 2**24
"""Elements of the per-point t part that :func:`log_likelihood_grid` may hold for a batch
of grid points at once."""


def check_widening(widening) -> float:
    """``widening`` as a float, or a ValueError naming it unless it is a finite number
    >= 1 (the factor by which delta's posterior is widened, see :func:`fit`'s
    ``delta_widening``)."""
    if not (
        isinstance(widening, (int, float, np.floating))
        and not isinstance(widening, bool)
        and math.isfinite(widening)
        and widening >= 1
    ):
        raise ValueError(f"`widening` must be a finite number >= 1; got {widening!r}")
    return float(widening)


def exact_delta_posterior(
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    prior: Prior,
    unbiased_counts: ArrayIn | None = None,
    probe: ArrayIn | None = None,
    one_star: float = 0.99,
    delta_prior: tuple[float, float] = DEFAULT_DELTA_PRIOR,
    level: float = 0.9,
    num_points: int = 256,
    delta_from: Literal["calibration", "all"] = "calibration",
    widening: float = 1.0,
) -> DeltaPosterior:
    """Posterior of delta by exact integration: every label distribution is integrated
    out in closed form, and delta by quadrature on a grid refined around its mass.

    With the prior fixed (e.g. ``fit(...).prior``), this is the reference that SVI's
    posterior of delta is checked against.

    Args:
        counts: ``(images, classes)`` biased counts.
        proposals: ``(images,)`` proposed classes.
        prior: keyword-only; the label-distribution prior, e.g. from :func:`fit`.
        unbiased_counts: keyword-only; calibration counts (see :func:`fit`).
        probe: keyword-only; probe images (see :func:`fit`).
        one_star: keyword-only; 1*, fixed.
        delta_prior: keyword-only; Beta prior of delta, as its ``delta / one_star``.
        level: keyword-only; credible level.
        num_points: keyword-only; grid points per refinement stage.
        delta_from: keyword-only; ``"calibration"`` (only calibration and probe images
            inform delta, as in :func:`fit`) or ``"all"``.
        widening: keyword-only; widen the posterior by this factor (>= 1) by raising the
            likelihood to ``1 / widening**2``: :func:`fit`'s ``delta_widening``
            reproduces the fit's posterior of delta, which allows for the fitted prior's
            response to delta.

    Returns:
        A :class:`DeltaPosterior`.

    Raises:
        ValueError: on invalid inputs, or with ``delta_from="calibration"`` when there are
            no calibration images or probes (delta's posterior is then its prior).
    """
    prep = prepare(counts, proposals, unbiased_counts, probe)
    a, b = _checks.beta_pair("delta_prior", delta_prior)
    if not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1]; got {one_star}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1); got {level}")
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    check_widening(widening)
    data = prep.data
    if delta_from == "calibration":
        keep = calibrated_rows(data)
        if keep.shape[0] == 0:
            raise ValueError("no calibration images or probes: delta's posterior is its prior")
        data = restrict(data, keep)  # with only its own entries
    grid, log_post = grid_posterior(
        pad(data),
        prior,
        one_star,
        (a, b),
        num_terms=prep.num_terms,
        num_points=num_points,
        temper=1.0 / float(widening) ** 2,
    )
    log_evidence = float(np.logaddexp.reduce(log_post.astype(np.float64)))
    wts = _grid_weights(log_post)
    mean = float(np.sum(wts * grid))
    cdf = np.cumsum(wts)
    tail = (1 - level) / 2
    interval = (float(np.interp(tail, cdf, grid)), float(np.interp(1 - tail, cdf, grid)))
    return DeltaPosterior(jnp.asarray(grid), jnp.asarray(wts), mean, interval, log_evidence)


def grid_posterior(
    data: SPAData,
    prior: Prior,
    one_star: float,
    delta_prior: tuple[float, float],
    *,
    num_terms: int,
    num_points: int = 256,
    temper: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The grid and the log of prior times likelihood times quadrature weight at each
    point (its softmax: each point's posterior probability) of delta given ``data`` (the
    rows that inform delta, padded) and ``prior``: Gauss-Legendre nodes over ``[0, 1*]``,
    then again over the range that holds all but 1e-9 of the mass. ``temper``: the
    likelihood is raised to this power (below 1: a wider posterior, see
    :func:`cleverjax.bayes.fitting.feedback_widening`)."""
    dtype = jnp.result_type(float)
    star = jnp.asarray(one_star, dtype)
    a, b = delta_prior
    nodes, w = np.polynomial.legendre.leggauss(num_points)
    pairs = entry_pairs(data.table)

    def stage(lo, hi):  # on the host, but for the likelihood: no small eager programs
        grid = (lo + (hi - lo) * (nodes + 1) / 2).astype(dtype)
        ll = stored_call(
            log_likelihood_grid, data, prior, grid, star, pairs,
            name="log_likelihood_grid", num_terms=num_terms,
        )  # fmt: skip
        ll = np.asarray(ll)
        log_prior = _beta_logpdf(grid.astype(np.float64) / one_star, a, b) - math.log(one_star)
        return grid, (temper * ll + log_prior + np.log(w * (hi - lo) / 2)).astype(dtype)

    grid, lp = stage(0.0, float(one_star))
    cdf = np.cumsum(_grid_weights(lp))
    lo = grid[max(int(np.searchsorted(cdf, 1e-9)) - 2, 0)]
    hi = grid[min(int(np.searchsorted(cdf, 1 - 1e-9)) + 2, len(grid) - 1)]
    return stage(float(lo), float(hi))


def _beta_logpdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """log density of Beta(a, b) at ``x`` inside (0, 1) (the grid's nodes are interior;
    ``scipy.stats`` would cost half a second to import in every process)."""
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - log_norm


def _grid_weights(log_post: np.ndarray) -> np.ndarray:
    """Each grid point's posterior probability (the softmax of ``log_post``)."""
    w = np.exp(log_post - log_post.max())
    return w / w.sum()


def draws_from_grid(key, grid: np.ndarray, log_post: np.ndarray, num: int) -> np.ndarray:
    """``(num,)`` draws of delta from its grid posterior (:func:`grid_posterior`): the
    inverse of the CDF that puts each point's mass on the cell around it, linear within
    cells."""
    w = _grid_weights(log_post)
    cdf = np.cumsum(w) - w / 2  # each point at the middle of its own mass
    u = numpy_rng(key).uniform(size=num)
    return np.interp(u, cdf, grid)
