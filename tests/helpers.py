"""Tolerances and statistical tests derived from sampling theory.

Every statistical test fixes its key, states a false-failure budget ``alpha`` and derives
its tolerance from it; each has a negative control that must be rejected.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

ALPHA = 1e-4
"""False-failure budget of one statistical test."""


def z_value(alpha: float = ALPHA, cells: int = 1) -> float:
    """Two-sided normal quantile for budget ``alpha`` split over ``cells`` (Bonferroni)."""
    return float(stats.norm.isf(alpha / (2 * cells)))


def proportion_ok(successes, trials, prob, *, alpha: float = ALPHA) -> bool:
    """|p_hat - p| <= z * sqrt(p (1 - p) / N) for every cell (Bonferroni over cells)."""
    successes = np.atleast_1d(np.asarray(successes, float))
    trials = np.atleast_1d(np.asarray(trials, float))
    prob = np.atleast_1d(np.asarray(prob, float))
    z = z_value(alpha, cells=successes.size)
    se = np.sqrt(prob * (1 - prob) / trials)
    return bool(np.all(np.abs(successes / trials - prob) <= z * se + 1e-12))


def _merge_small(observed: np.ndarray, expected: np.ndarray, minimum: float = 5.0):
    """Pool adjacent cells until every expected count is at least ``minimum``."""
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected):
        o_acc += o
        e_acc += e
        if e_acc >= minimum:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0 or o_acc > 0:
        if exp:
            obs[-1] += o_acc
            exp[-1] += e_acc
        else:
            obs.append(o_acc)
            exp.append(e_acc)
    return np.array(obs), np.array(exp)


def chisquare_pvalue(observed, probs) -> float:
    """Goodness of fit of counts to cell probabilities; small cells pooled, empty ones dropped."""
    observed = np.asarray(observed, float).ravel()
    probs = np.asarray(probs, float).ravel()
    if np.any((probs == 0) & (observed > 0)):
        return 0.0
    keep = probs > 0
    expected = probs[keep] / probs[keep].sum() * observed.sum()
    obs, exp = _merge_small(observed[keep], expected)
    if len(obs) < 2:
        return 1.0
    return float(stats.chisquare(obs, exp).pvalue)


def histogram_pvalue(samples, pmf) -> float:
    """Goodness of fit of integer samples to a pmf over 0..len(pmf)-1."""
    samples = np.asarray(samples).ravel()
    counts = np.bincount(samples, minlength=len(pmf))
    if len(counts) > len(pmf):
        return 0.0
    return chisquare_pvalue(counts, pmf)


def two_sample_pvalue(a_counts, b_counts) -> float:
    """Chi-square test that two histograms come from the same distribution."""
    table = np.stack([np.asarray(a_counts, float), np.asarray(b_counts, float)])
    table = table[:, table.sum(axis=0) > 0]
    # Pool sparse columns so that expected counts are at least 5.
    order = np.argsort(table.sum(axis=0))[::-1]
    table = table[:, order]
    cols, acc = [], np.zeros(2)
    for col in table.T:
        acc = acc + col
        if acc.sum() >= 10 * 2:
            cols.append(acc)
            acc = np.zeros(2)
    if acc.sum() > 0:
        if cols:
            cols[-1] = cols[-1] + acc
        else:
            cols.append(acc)
    table = np.array(cols).T
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def poisson_binomial_pmf(probs) -> np.ndarray:
    """Exact pmf of a sum of independent Bernoulli(probs) by convolution."""
    pmf = np.array([1.0])
    for q in np.asarray(probs, float):
        pmf = np.convolve(pmf, [1 - q, q])
    return pmf


def log_gamma_cdf(t, alpha: float) -> np.ndarray:
    """P(log G <= t) for G ~ Gamma(alpha, 1), also where exp(t) underflows: below
    t = -30 the regularised incomplete gamma is x^alpha / Gamma(alpha + 1) to double
    precision (its next term is of relative size x < 1e-13)."""
    t = np.asarray(t, float)
    tail = np.exp(alpha * np.minimum(t, -30.0) - special.gammaln(alpha + 1))
    return np.where(t < -30.0, tail, special.gammainc(alpha, np.exp(np.maximum(t, -30.0))))
