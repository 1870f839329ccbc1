"""The exact posterior of delta on a grid: every label distribution integrated out in
closed form and delta by quadrature, the reference that SVI is checked against."""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from .._checks import ArrayIn
from .data import SPAData, calibrated, pad, prepare
from .fitting import _check_beta_prior
from .likelihood import Prior, log_likelihood, table_log_weights


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
    data: SPAData, prior: Prior, grid: Array, one_star: Array, *, num_terms: int
) -> Float[Array, " points"]:
    """Total log likelihood of ``data`` at every delta of ``grid`` (1* fixed). The data are
    an argument, so one compiled program serves every data set of the same padded shape."""

    def one(d):
        log_w = table_log_weights(data.table, d, one_star, num_terms)
        return jnp.sum(data.weight * log_likelihood(data, prior, log_w))

    return jax.lax.map(one, grid)


def exact_delta_posterior(
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    prior: Prior,
    unbiased_counts: ArrayIn | None = None,
    probe: ArrayIn | None = None,
    one_star: float = 0.99,
    delta_prior: tuple[float, float] = (1.0, 1.0),
    level: float = 0.9,
    num_points: int = 256,
    delta_from: Literal["calibration", "all"] = "calibration",
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

    Returns:
        A :class:`DeltaPosterior`.

    Raises:
        ValueError: on invalid inputs, or with ``delta_from="calibration"`` when there are
            no calibration images or probes (delta's posterior is then its prior).
    """
    prep = prepare(counts, proposals, unbiased_counts, probe)
    a, b = _check_beta_prior("delta_prior", delta_prior)
    if not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1]; got {one_star}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1); got {level}")
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    dtype = jnp.result_type(float)
    data = prep.data
    if delta_from == "calibration":
        keep = np.asarray(calibrated(data))
        if not keep.any():
            raise ValueError("no calibration images or probes: delta's posterior is its prior")
        data = data.take(np.flatnonzero(keep))
    data = pad(data)
    star = jnp.asarray(one_star, dtype)

    def stage(lo, hi):
        nodes, w = np.polynomial.legendre.leggauss(num_points)
        grid = jnp.asarray(lo + (hi - lo) * (nodes + 1) / 2, dtype)
        ll = log_likelihood_grid(data, prior, grid, star, num_terms=prep.num_terms)
        log_prior = jax.scipy.stats.beta.logpdf(grid / star, a, b) - jnp.log(star)
        return grid, ll + log_prior + jnp.asarray(np.log(w * (hi - lo) / 2), dtype)

    grid, lp = stage(0.0, float(one_star))
    cdf = np.cumsum(np.asarray(jax.nn.softmax(lp)))
    g = np.asarray(grid)
    lo = g[max(int(np.searchsorted(cdf, 1e-9)) - 2, 0)]
    hi = g[min(int(np.searchsorted(cdf, 1 - 1e-9)) + 2, len(g) - 1)]
    grid, lp = stage(float(lo), float(hi))
    log_evidence = float(jax.scipy.special.logsumexp(lp))
    wts = jax.nn.softmax(lp)
    mean = float(jnp.sum(wts * grid))
    cdf = np.cumsum(np.asarray(wts))
    tail = (1 - level) / 2
    g = np.asarray(grid)
    interval = (float(np.interp(tail, cdf, g)), float(np.interp(1 - tail, cdf, g)))
    return DeltaPosterior(grid, wts, mean, interval, log_evidence)
