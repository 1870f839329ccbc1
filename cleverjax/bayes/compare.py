"""Choosing a model variant by cross-validated prediction of the calibration images.

SPA says a rejected proposal's annotation picks class ``k`` in proportion to ``p[k]``,
and that one delta holds for every image. Real annotators may pick more uniformly, or
accept some classes' proposals more readily. :func:`fit` has an exact model for each
variant: ``rejection="uniform"`` or ``"mixed"``, ``delta_by_class=True``,
``delta_by_difficulty=True``. Which one fits
the annotators is a question the *calibration images* answer: they carry annotations
made without a proposal, which stand for ``p``, and annotations made with it, which show
what annotators do with a proposal. :func:`compare_models` fits every variant and scores
it by the held-out predictive density of each calibration image's biased annotations given its
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
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from tqdm import tqdm

from .. import _checks
from .._random import as_typed_key
from .data import compress, numpy_rng, prepare
from .fitting import FitResult, fit
from .likelihood import DifficultyDelta, Prior, log_likelihood, table_log_weights
from .model import REJECTION_KERNELS, polynomial_terms

ROBUST_VARIANTS: dict[str, dict[str, Any]] = {
    "spa": {},
    "uniform_rejection": {"rejection": "uniform"},
    "delta_by_difficulty": {"delta_by_difficulty": True},
    "delta_by_class": {"delta_by_class": True},
    "mixed_rejection": {"rejection": "mixed"},
}
"""The variants :func:`compare_models` compares by default, simplest first: name ->
options of :func:`cleverjax.fit`."""

CLEAR_PREFERENCE = 2.0
"""A variant is preferred to a simpler one only when its held-out score is higher by
more than this many standard errors of the difference."""

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
    exact likelihood of both, minus that of the unbiased counts alone. ``deltas`` is
    ``(draws,)``, ``(draws, classes)`` with one delta per class, or ``(draws, 2)`` (hard,
    easy) when the prior's polynomials are those of delta by difficulty (``degree`` 2)."""
    rho = np.asarray(proposals, np.int32)
    probe = np.zeros(rho.shape[0], bool)
    both, inverse = compress(rho, counts, unbiased, probe)
    alone, inverse_alone = compress(rho, np.zeros_like(counts), unbiased, probe)
    num_terms = polynomial_terms(int(np.asarray(counts).sum(axis=1).max()), prior.degree)
    dtype = prior.concentration.dtype
    deltas = jnp.asarray(deltas, dtype)
    if prior.degree == 2:
        deltas = DifficultyDelta(deltas[:, 0], deltas[:, 1])

    @jax.jit
    def per_draw(ds):
        log_w = table_log_weights(both.table, ds[0], ds[1], num_terms)
        return log_likelihood(both, prior, log_w)

    ll_both = jax.lax.map(per_draw, (deltas, jnp.asarray(one_stars, dtype)))
    zero_w = jnp.zeros((alone.table.num_entries, 1), dtype)
    ll_alone = log_likelihood(alone, prior, zero_w)
    return np.asarray(ll_both, float)[:, inverse] - np.asarray(ll_alone, float)[inverse_alone]


class ModelComparison(NamedTuple):
    """Result of :func:`compare_models` and :func:`compare_rejection`.

    Attributes:
        best: the chosen variant: the first (simplest, in the order given) whose held-out
            score is within :data:`CLEAR_PREFERENCE` standard errors of the highest.
        top: the variant with the highest held-out score.
        elpd: variant -> summed held-out log predictive density of the calibration
            images' biased annotations given their unbiased ones (nats; higher is better).
        se: variant -> standard error of its ``elpd``.
        diff_se: variant -> standard error of its ``elpd`` minus the top one's.
        pointwise: variant -> ``(images,)`` held-out log density of each scored image.
        images: calibration images scored.
        folds: cross-validation folds.
        fits: variant -> its :class:`FitResult` on all images.
    """

    best: str
    top: str
    elpd: dict[str, float]
    se: dict[str, float]
    diff_se: dict[str, float]
    pointwise: dict[str, np.ndarray]
    images: int
    folds: int
    fits: dict[str, FitResult]

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain Python values (JSON-ready)."""
        out = {}
        for c in self.elpd:
            fit_c = self.fits[c]
            out[c] = {
                "elpd": self.elpd[c],
                "se": self.se[c],
                "elpd_diff": self.elpd[c] - self.elpd[self.top],
                "diff_se": self.diff_se[c],
                "delta": fit_c.delta,
                "delta_by_class": None
                if fit_c.delta_by_class is None
                else [float(x) for x in fit_c.delta_by_class],
                "delta_by_difficulty": fit_c.to_dict()["delta_by_difficulty"],
                "rejection": fit_c.rejection,
                "uniform_share": fit_c.uniform_share,
            }
        return {
            "best": self.best,
            "top": self.top,
            "images": self.images,
            "folds": self.folds,
            "variants": out,
        }


MIN_SCORED_IMAGES = 10
"""Calibration images (with both kinds of annotations) below which the comparisons
refuse to choose."""

_FOLD_SETTINGS = dict(num_draws=1, num_interval_draws=0, num_ppc_replicates=0, check_model=False)
"""A fold's fit needs the prior and the draws of the globals, not the images' summaries."""

_VARIANT_OPTIONS = ("rejection", "delta_by_class", "delta_by_difficulty")
"""Options of :func:`cleverjax.fit` that a variant may set."""


def _se(x: np.ndarray) -> float:
    return float(math.sqrt(x.shape[0] * np.var(x))) if x.shape[0] > 1 else math.nan


def compare_models(
    key,
    counts,
    proposals,
    *,
    unbiased_counts,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int = 5,
    num_predictive_draws: int = 1000,
    **fit_options,
) -> ModelComparison:
    """Fit the model in each variant and choose the one that best predicts the calibration
    images held out (see the module docstring).

    Costs ``len(variants) * (folds + 1)`` fits; the fold fits skip the per-image
    summaries.

    Args:
        key: PRNG key (the same fit key is used for every variant and fold).
        counts, proposals: as for :func:`cleverjax.fit`.
        unbiased_counts: keyword-only; as for :func:`cleverjax.fit`; at least
            :data:`MIN_SCORED_IMAGES` images must have both unbiased and biased annotations.
        variants: keyword-only; name -> the variant's options of :func:`cleverjax.fit`
            (``rejection``, ``delta_by_class``, ``delta_by_difficulty``); default
            :data:`ROBUST_VARIANTS`.
        folds: keyword-only; cross-validation folds over the calibration images (>= 2).
        num_predictive_draws: keyword-only; draws of the globals the held-out predictive
            density averages over.
        **fit_options: passed to :func:`cleverjax.fit` for every variant (not the options
            that variants set); ``progress=True`` shows one bar over all the fits.

    Returns:
        A :class:`ModelComparison`; ``fits[best]`` is the chosen variant's fit: the
        simplest (first) variant whose score is within :data:`CLEAR_PREFERENCE` standard
        errors of the highest, so that a variant must earn its extra parameters.

    Raises:
        ValueError: on no variants, a variant option that is not allowed, too few
            calibration images, or invalid inputs (as :func:`cleverjax.fit`).
    """
    variants = dict(ROBUST_VARIANTS if variants is None else variants)
    if not variants:
        raise ValueError("`variants` must name at least one variant; got none")
    for name, options in variants.items():
        bad = sorted(set(options) - set(_VARIANT_OPTIONS))
        if bad:
            raise ValueError(
                f"variant {name!r} sets {bad}; a variant may set only {list(_VARIANT_OPTIONS)}"
            )
    clash = sorted(set(fit_options) & set(_VARIANT_OPTIONS))
    if clash:
        raise ValueError(f"pass {clash} in the `variants`, not as options of every fit")
    if not (isinstance(folds, int) and folds >= 2):
        raise ValueError(f"`folds` must be an int >= 2; got {folds!r}")
    _checks.positive_int("num_predictive_draws", num_predictive_draws)
    probe = fit_options.pop("probe", None)
    prep = prepare(counts, proposals, unbiased_counts, probe)
    scored = np.flatnonzero((prep.counts.sum(axis=1) > 0) & (prep.unbiased.sum(axis=1) > 0))
    if scored.shape[0] < max(MIN_SCORED_IMAGES, folds):
        raise ValueError(
            f"comparing models needs at least {max(MIN_SCORED_IMAGES, folds)} images with "
            f"both biased and unbiased annotations; got {scored.shape[0]}"
        )
    kd = as_typed_key(key)
    k_fit, k_fold = jax.random.split(kd)
    fold_of = numpy_rng(k_fold).permutation(scored.shape[0]) % folds
    inputs = (prep.counts, prep.proposals, prep.unbiased, prep.probe)
    fits, pointwise = {}, {}
    # One bar over the fits (each fit's own bar stays off: one line is enough).
    show = bool(fit_options.pop("progress", False))
    bar = tqdm(total=len(variants) * (folds + 1), desc="compare", disable=not show, leave=False)
    for name, options in variants.items():
        bar.set_postfix_str(name)
        fits[name] = fit(
            k_fit, *inputs[:2], unbiased_counts=inputs[2], probe=inputs[3],
            **options, **fit_options,
        )  # fmt: skip
        bar.update()
        scores = np.empty(scored.shape[0])
        for f in range(folds):
            held = scored[fold_of == f]
            keep = np.ones(prep.counts.shape[0], bool)
            keep[held] = False
            b, rho, u, pr = (x[keep] for x in inputs)
            with warnings.catch_warnings():  # the fit on all images has warned already
                warnings.simplefilter("ignore")
                res = fit(
                    k_fit, b, rho, unbiased_counts=u, probe=pr,
                    **options, **{**fit_options, **_FOLD_SETTINGS},
                )  # fmt: skip
            per_class = res.delta_by_class_samples
            ends = res.delta_by_difficulty_samples
            deltas = np.asarray(res.delta_samples if per_class is None else per_class)
            deltas = deltas if ends is None else ends
            draws = min(num_predictive_draws, deltas.shape[0])
            ll = calibration_log_lik(
                res.prior,
                deltas[:draws],
                np.asarray(res.one_star_samples)[:draws],
                *(x[held] for x in inputs[:3]),
            )
            scores[fold_of == f] = logsumexp(ll, axis=0) - math.log(draws)
            bar.update()
        pointwise[name] = scores
    bar.close()
    elpd = {c: float(np.sum(pointwise[c])) for c in variants}
    top = max(variants, key=lambda c: elpd[c])
    diff_se = {c: _se(pointwise[c] - pointwise[top]) for c in variants}
    # The simplest variant that the top one does not clearly beat (a zero standard error
    # means the scores are identical).
    best = next(
        c for c in variants if elpd[top] - elpd[c] <= CLEAR_PREFERENCE * np.nan_to_num(diff_se[c])
    )
    return ModelComparison(
        best=best,
        top=top,
        elpd=elpd,
        se={c: _se(pointwise[c]) for c in variants},
        diff_se=diff_se,
        pointwise=pointwise,
        images=int(scored.shape[0]),
        folds=folds,
        fits=fits,
    )


def compare_rejection(
    key,
    counts,
    proposals,
    *,
    unbiased_counts,
    candidates: Sequence[str] = REJECTION_KERNELS,
    **options,
) -> ModelComparison:
    """:func:`compare_models` over rejection kernels: ``candidates`` (values of
    :func:`cleverjax.fit`'s ``rejection``) become variants of those names; ``options``
    as for :func:`compare_models`."""
    candidates = tuple(candidates)
    if not candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"`candidates` must name distinct kernels; got {candidates}")
    for c in candidates:
        _checks.check_choice("candidates", c, REJECTION_KERNELS)
    return compare_models(
        key,
        counts,
        proposals,
        unbiased_counts=unbiased_counts,
        variants={c: {"rejection": c} for c in candidates},
        **options,
    )
