"""Choosing the rejection kernel by cross-validated prediction of the calibration images.

SPA says a rejected proposal's annotation picks class ``k`` in proportion to ``p[k]``;
real annotators may instead pick more uniformly. :func:`fit` has one exact model per
kernel (``rejection="proportional"``, ``"uniform"`` or ``"mixed"``). Which one fits the
annotators is a question the *calibration images* answer: they carry annotations made
without a proposal, which stand for ``p``, and annotations made with it, which show what
rejections do. :func:`compare_rejection` fits every candidate and scores it by the
held-out predictive density of each calibration image's biased annotations given its
unbiased ones, ``log p(biased_i | unbiased_i, other images)``, by K-fold
cross-validation: the prior and delta are fitted again without the fold's images.

Refitting matters: the learned prior has hundreds of parameters and sees the rejections
of every image, so an in-sample score (or importance-sampling leave-one-out over delta
alone, with the prior held fixed) favours the kernel that lets the prior learn from
rejections, whatever the annotators did.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from .. import _checks
from .._random import as_typed_key
from .data import compress, numpy_rng, prepare
from .fitting import FitResult, fit
from .likelihood import Prior, log_likelihood, table_log_weights
from .model import REJECTION_KERNELS

# ----------------------------------------------------------------------------------
# The calibration images' predictive density
# ----------------------------------------------------------------------------------


def calibration_log_lik(
    prior: Prior,
    deltas: np.ndarray,
    one_stars: np.ndarray,
    counts: np.ndarray,
    proposals: np.ndarray,
    unbiased: np.ndarray,
) -> np.ndarray:
    """``(draws, images)`` log density of each image's biased counts given its unbiased
    ones, ``log p(biased | unbiased)``, under ``prior`` at each draw of (delta, 1*): the
    exact likelihood of both, minus that of the unbiased counts alone."""
    rho = np.asarray(proposals, np.int32)
    probe = np.zeros(rho.shape[0], bool)
    both, inverse = compress(rho, counts, unbiased, probe)
    alone, inverse_alone = compress(rho, np.zeros_like(counts), unbiased, probe)
    num_terms = int(np.asarray(counts).sum(axis=1).max()) + 1
    dtype = prior.concentration.dtype

    @jax.jit
    def per_draw(ds):
        log_w = table_log_weights(both.table, ds[0], ds[1], num_terms)
        return log_likelihood(both, prior, log_w)

    ll_both = jax.lax.map(per_draw, (jnp.asarray(deltas, dtype), jnp.asarray(one_stars, dtype)))
    zero_w = jnp.zeros((alone.table.num_entries, 1), dtype)
    ll_alone = log_likelihood(alone, prior, zero_w)
    return np.asarray(ll_both, float)[:, inverse] - np.asarray(ll_alone, float)[inverse_alone]


class RejectionComparison(NamedTuple):
    """Result of :func:`compare_rejection`.

    Attributes:
        best: the candidate with the highest held-out predictive density.
        elpd: candidate -> summed held-out log predictive density of the calibration
            images' biased annotations given their unbiased ones (nats; higher is better).
        se: candidate -> standard error of its ``elpd``.
        diff_se: candidate -> standard error of its ``elpd`` minus the best's (a
            difference within about two of these is not a clear preference).
        pointwise: candidate -> ``(images,)`` held-out log density of each scored image.
        images: calibration images scored.
        folds: cross-validation folds.
        fits: candidate -> its :class:`FitResult` on all images.
    """

    best: str
    elpd: dict[str, float]
    se: dict[str, float]
    diff_se: dict[str, float]
    pointwise: dict[str, np.ndarray]
    images: int
    folds: int
    fits: dict[str, FitResult]

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain Python values (JSON-ready)."""
        return {
            "best": self.best,
            "images": self.images,
            "folds": self.folds,
            "candidates": {
                c: {
                    "elpd": self.elpd[c],
                    "se": self.se[c],
                    "elpd_diff": self.elpd[c] - self.elpd[self.best],
                    "diff_se": self.diff_se[c],
                    "delta": self.fits[c].delta,
                    "uniform_share": self.fits[c].uniform_share,
                }
                for c in self.elpd
            },
        }


MIN_SCORED_IMAGES = 10
"""Calibration images (with both kinds of annotations) below which
:func:`compare_rejection` refuses to choose."""

_FOLD_SETTINGS = dict(num_draws=1, num_interval_draws=1, num_ppc_replicates=0, check_model=False)
"""A fold's fit needs the prior and the draws of the globals, not the images' summaries."""


def _se(x: np.ndarray) -> float:
    return float(math.sqrt(x.shape[0] * np.var(x))) if x.shape[0] > 1 else math.nan


def compare_rejection(
    key,
    counts,
    proposals,
    *,
    unbiased_counts,
    candidates: Sequence[str] = REJECTION_KERNELS,
    folds: int = 5,
    num_predictive_draws: int = 1000,
    **fit_options,
) -> RejectionComparison:
    """Fit the model with each rejection kernel and choose the one that best predicts the
    calibration images held out (see the module docstring).

    Costs ``len(candidates) * (folds + 1)`` fits; the fold fits skip the per-image
    summaries.

    Args:
        key: PRNG key (the same fit key is used for every candidate and fold).
        counts, proposals: as for :func:`cleverjax.fit`.
        unbiased_counts: keyword-only; as for :func:`cleverjax.fit`; at least
            :data:`MIN_SCORED_IMAGES` images must have both unbiased and biased annotations.
        candidates: keyword-only; kernels to compare (see ``fit``'s ``rejection``).
        folds: keyword-only; cross-validation folds over the calibration images (>= 2).
        num_predictive_draws: keyword-only; draws of (delta, 1*) the held-out predictive
            density averages over.
        **fit_options: passed to :func:`cleverjax.fit` (not ``rejection``).

    Returns:
        A :class:`RejectionComparison`; ``fits[best]`` is the chosen model's fit.

    Raises:
        ValueError: on an unknown or repeated candidate, too few calibration images, or
            invalid inputs (as :func:`cleverjax.fit`).
    """
    if "rejection" in fit_options:
        raise ValueError("pass the kernels to compare as `candidates`, not `rejection`")
    candidates = tuple(candidates)
    if not candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"`candidates` must name distinct kernels; got {candidates}")
    for c in candidates:
        _checks.check_choice("candidates", c, REJECTION_KERNELS)
    if not (isinstance(folds, int) and folds >= 2):
        raise ValueError(f"`folds` must be an int >= 2; got {folds!r}")
    if not (isinstance(num_predictive_draws, int) and num_predictive_draws >= 1):
        raise ValueError(
            f"`num_predictive_draws` must be a positive int; got {num_predictive_draws!r}"
        )
    probe = fit_options.pop("probe", None)
    prep = prepare(counts, proposals, unbiased_counts, probe)
    scored = np.flatnonzero((prep.counts.sum(axis=1) > 0) & (prep.unbiased.sum(axis=1) > 0))
    if scored.shape[0] < max(MIN_SCORED_IMAGES, folds):
        raise ValueError(
            f"choosing a rejection kernel needs at least {max(MIN_SCORED_IMAGES, folds)} images "
            f"with both biased and unbiased annotations; got {scored.shape[0]}"
        )
    kd = as_typed_key(key)
    k_fit, k_fold = jax.random.split(kd)
    fold_of = numpy_rng(k_fold).permutation(scored.shape[0]) % folds
    inputs = (prep.counts, prep.proposals, prep.unbiased, prep.probe)
    fits, pointwise = {}, {}
    for c in candidates:
        fits[c] = fit(
            k_fit,
            *inputs[:2],
            unbiased_counts=inputs[2],
            probe=inputs[3],
            rejection=c,
            **fit_options,
        )
        scores = np.empty(scored.shape[0])
        for f in range(folds):
            held = scored[fold_of == f]
            keep = np.ones(prep.counts.shape[0], bool)
            keep[held] = False
            b, rho, u, pr = (x[keep] for x in inputs)
            with warnings.catch_warnings():  # the fit on all images has warned already
                warnings.simplefilter("ignore")
                res = fit(
                    k_fit,
                    b,
                    rho,
                    unbiased_counts=u,
                    probe=pr,
                    rejection=c,
                    **{**fit_options, **_FOLD_SETTINGS},
                )
            draws = min(num_predictive_draws, res.delta_samples.shape[0])
            ll = calibration_log_lik(
                res.prior,
                np.asarray(res.delta_samples)[:draws],
                np.asarray(res.one_star_samples)[:draws],
                *(x[held] for x in inputs[:3]),
            )
            scores[fold_of == f] = logsumexp(ll, axis=0) - math.log(draws)
        pointwise[c] = scores
    best = max(candidates, key=lambda c: float(np.sum(pointwise[c])))
    return RejectionComparison(
        best=best,
        elpd={c: float(np.sum(pointwise[c])) for c in candidates},
        se={c: _se(pointwise[c]) for c in candidates},
        diff_se={c: _se(pointwise[c] - pointwise[best]) for c in candidates},
        pointwise=pointwise,
        images=int(scored.shape[0]),
        folds=folds,
        fits=fits,
    )
