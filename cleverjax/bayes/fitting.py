"""``fit``: infer delta, 1* and every image's label distribution, as a pipeline of stages:
prepare the data, fit the prior and the globals, draw the globals, summarise every image,
check the model.

What identifies delta: the acceptance rate of an image is ``delta + (1* - delta) p[rho]``,
so delta is pinned down only where something independent tells us ``p[rho]``: unbiased
annotations of the same images (the paper's calibration design: 100 images with 10
annotations each), or *probe* images whose proposal was drawn at random (for them
``E[p[rho]] = 1/K`` whatever the image). From biased counts alone delta trades off
against the prior on ``p[rho]``; :func:`fit` then warns and, by default, reports the
prior of delta instead of a confident but unsupported number.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.infer import MCMC, NUTS, SVI

from .. import _checks
from .._cache import compile_options, release_compiled_programs
from .._checks import ArrayIn
from .._programs import stored_call
from .._random import as_typed_key
from .checks import ModelCheck, model_checks, warn_failed
from .data import (
    Prepared,
    SPAData,
    calibrated,
    calibrated_rows,
    host_array,
    live_pairs,
    local_arrays,
    pad,
    pad_levels,
    prepare,
    replicate_on,
    restrict,
    shard_rows,
    split_levels,
    subsample,
)
from .exact import _grid_weights, draws_from_grid, grid_posterior
from .likelihood import DifficultyDelta, Prior, count_bound, uniform_components
from .model import (
    DEFAULT_DELTA_PRIOR,
    REJECTION_KERNELS,
    ModelConfig,
    QuadratureELBO,
    _global_sites,
    component_kinds,
    component_rejection,
    degree,
    freeze,
    global_guide,
    global_params,
    initial_params,
    negative_elbo,
    param_constraints,
    polynomial_terms,
    prior_from_params,
    spa_model,
)
from .optimize import ConvergenceWarning, Optimized, lenient_promotion, run_lbfgs, run_svi
from .posterior import (
    PosteriorPredictive,
    acceptance_check,
    stratified_index,
    summaries_program,
)

MIN_CALIBRATION_IMAGES = 20
"""Calibration images (biased annotations plus unbiased ones, or a probe proposal) below
which delta counts as not identified: :func:`fit` warns and ``identified`` is false."""

MIN_CALIBRATION_ANNOTATIONS = 100
"""Biased annotations on calibration images below which delta counts as not identified."""


class IdentifiabilityWarning(UserWarning):
    """The data carry too little calibration information to identify delta."""


class StageSeconds(NamedTuple):
    """Wall time of each stage of :func:`fit`, compilation included (seconds)."""

    prepare: float
    optimise: float
    draws: float
    summaries: float
    check: float


class FitResult(NamedTuple):
    """Result of :func:`fit`.

    Attributes:
        delta: posterior mean of delta.
        delta_interval: equal-tailed credible interval of delta (``level``).
        one_star: posterior mean of 1* (the fixed value when not learned).
        one_star_interval: its credible interval (both ends equal when fixed).
        posterior_mean: ``(images, classes)`` posterior mean of every image's label
            distribution: the repaired labels (averaged over the posterior of delta).
        lower: ``(images, classes)`` lower end of each per-image credible interval
            (``None`` with ``num_interval_draws=0``).
        upper: ``(images, classes)`` upper end (``None`` with ``num_interval_draws=0``).
        level: credible level of the intervals (default 0.9).
        losses: ``(steps,)`` the objective (negative ELBO) after every optimiser step
            (every L-BFGS evaluation, rounds one after the other).
        converged: whether the optimiser reached a plateau before ``max_steps``.
        identified: whether the calibration data identify delta (see
            :data:`MIN_CALIBRATION_IMAGES` and :data:`MIN_CALIBRATION_ANNOTATIONS`).
        delta_samples: ``(draws,)`` posterior draws of delta.
        prior: the learned prior (empirical Bayes).
        params: all fitted parameters (NumPyro parameter names to arrays).
        ppc: posterior predictive check of the acceptance rate.
        checks: model checks of SPA on the calibration images (see
            :func:`cleverjax.model_checks`): what rejections choose, and acceptance
            against difficulty; empty when not run.
        method: ``"svi"`` or ``"nuts"``.
        seconds: wall time, compilation included.
        step_seconds: wall time of one optimiser step, compilation excluded.
        stage_seconds: wall time of each stage (see :class:`StageSeconds`).
        one_star_samples: ``(draws,)`` posterior draws of 1*, paired with
            ``delta_samples`` (all equal when 1* is fixed).
        rejection: the rejection kernel of the model (see :func:`fit`).
        uniform_share: with ``rejection="mixed"``, the prior's share of images whose
            rejections choose uniformly (averaged over the images' proposed classes);
            1 with ``"uniform"``, 0 with ``"proportional"``.
        delta_by_class: with ``delta_by_class=True``, ``(classes,)`` posterior mean of
            each proposed class's delta (``delta`` and ``delta_samples`` are then the
            images' average delta); otherwise ``None``.
        delta_by_class_interval: ``(classes, 2)`` their credible intervals, or ``None``.
        delta_by_class_samples: ``(draws, classes)`` their posterior draws, or ``None``.
        delta_by_difficulty: with ``delta_by_difficulty=True``, ``(2,)`` posterior means
            of delta at the hardest and at the easiest image (``p[proposal]`` 0 and 1;
            ``delta`` and ``delta_samples`` are then the images' average delta);
            otherwise ``None``.
        delta_by_difficulty_interval: ``(2, 2)`` their credible intervals, or ``None``.
        delta_by_difficulty_samples: ``(draws, 2)`` their posterior draws, or ``None``.
        delta_draws: where ``delta_samples`` come from: ``"exact"``, the exact posterior
            of delta given the fitted prior (by quadrature on a grid; the default fit:
            the cut, 1* fixed, one delta), ``"variational"``, the fitted guide,
            ``"nuts"``, or ``"prior"`` (no calibration data).
        delta_widening: with ``delta_draws="exact"``, the factor by which delta's
            posterior given the fitted prior was widened because the prior moves with
            delta (see :func:`cleverjax.bayes.fitting.feedback_widening`): 1 where it
            does not, about 1.16 on data as diffuse as the Treeversity#6 preset; 1 with
            the other draws.
    """

    delta: float
    delta_interval: tuple[float, float]
    one_star: float
    one_star_interval: tuple[float, float]
    posterior_mean: Float[Array, "images classes"]
    lower: Float[Array, "images classes"] | None
    upper: Float[Array, "images classes"] | None
    level: float
    losses: Float[Array, " steps"]
    converged: bool
    identified: bool
    delta_samples: Float[Array, " draws"]
    prior: Prior
    params: dict
    ppc: PosteriorPredictive | None
    checks: tuple[ModelCheck, ...]
    method: str
    seconds: float
    step_seconds: float
    stage_seconds: StageSeconds
    one_star_samples: Float[Array, " draws"] | None = None
    rejection: str = "proportional"
    uniform_share: float = 0.0
    delta_by_class: np.ndarray | None = None
    delta_by_class_interval: np.ndarray | None = None
    delta_by_class_samples: np.ndarray | None = None
    delta_by_difficulty: np.ndarray | None = None
    delta_by_difficulty_interval: np.ndarray | None = None
    delta_by_difficulty_samples: np.ndarray | None = None
    delta_draws: str = "variational"
    delta_widening: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The scalar results as plain Python values (JSON-ready): delta, 1*, their
        intervals, the credible level, convergence, identification, the predictive check,
        method, number of optimiser steps and timings."""
        out: dict[str, Any] = {
            "delta": self.delta,
            "delta_interval": list(self.delta_interval),
            "one_star": self.one_star,
            "one_star_interval": list(self.one_star_interval),
            "level": self.level,
            "converged": self.converged,
            "identified": self.identified,
            "method": self.method,
            "delta_draws": self.delta_draws,
            "delta_widening": self.delta_widening,
            "rejection": self.rejection,
            "uniform_share": self.uniform_share,
            "delta_by_class": None
            if self.delta_by_class is None
            else [float(x) for x in self.delta_by_class],
            "delta_by_class_interval": None
            if self.delta_by_class_interval is None
            else [[float(a), float(b)] for a, b in self.delta_by_class_interval],
            "delta_by_difficulty": None
            if self.delta_by_difficulty is None
            else dict(zip(("hard", "easy"), (float(x) for x in self.delta_by_difficulty))),
            "delta_by_difficulty_interval": None
            if self.delta_by_difficulty_interval is None
            else dict(
                zip(
                    ("hard", "easy"),
                    ([float(a), float(b)] for a, b in self.delta_by_difficulty_interval),
                )
            ),
            "steps": int(self.losses.shape[0]),
            "seconds": self.seconds,
            "step_seconds": self.step_seconds,
            "stage_seconds": self.stage_seconds._asdict(),
            "images": int(self.posterior_mean.shape[0]),
            "classes": int(self.posterior_mean.shape[1]),
        }
        if self.ppc is not None:
            out["ppc"] = {"acceptance_rate": self.ppc.observed, "p_value": self.ppc.p_value}
        out["checks"] = [
            {
                "name": c.name,
                "p_value": None if math.isnan(c.p_value) else c.p_value,
                "passed": c.passed,
                "verdict": c.verdict,
            }
            for c in self.checks
        ]
        return out


# ----------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------


def _check_positive_ints(**values) -> None:
    for name, v in values.items():
        _checks.positive_int(name, v)


def _identification(prep: Prepared) -> tuple[bool, int, int]:
    """(identified, calibration images, biased annotations on them)."""
    nb, nu = prep.counts.sum(axis=1), prep.unbiased.sum(axis=1)
    cal = (nb > 0) & ((nu > 0) | prep.probe)
    images, annotations = int(cal.sum()), int(nb[cal].sum())
    ok = images >= MIN_CALIBRATION_IMAGES and annotations >= MIN_CALIBRATION_ANNOTATIONS
    return ok, images, annotations


def _warn_identification(images: int, annotations: int) -> None:
    if images == 0:
        what = (
            "no image has both unbiased and biased annotations, and no probe images are "
            "marked. From biased counts alone delta trades off against the prior on "
            "p[proposal], so cleverjax reports delta's prior (a wide interval) and averages "
            "the labels over it"
        )
    else:
        what = (
            f"only {images} calibration image(s) with {annotations} biased annotation(s); "
            f"at least {MIN_CALIBRATION_IMAGES} images and {MIN_CALIBRATION_ANNOTATIONS} "
            f"annotations are needed for delta to count as identified, so its interval is "
            f"wide and depends on the prior"
        )
    warnings.warn(
        f"delta is not identified by these data: {what}. Add calibration images (unbiased "
        f"annotations) or probes to learn delta (see cleverjax.plan_calibration).",
        IdentifiabilityWarning,
        stacklevel=3,
    )


INITIAL_UNIFORM_SHARE = 0.5
"""With ``rejection="mixed"``, the uniform kernel's share of the prior's weight at the
start of the fit. (Starts nearer SPA, at 0.1 or 0.01, or from SPA's fitted prior, ended
at worse optima of the objective on CIFAR-10H data.)"""


def initial_prior(prep: Prepared, config: ModelConfig) -> Prior:
    """Data-driven start: each row's mean label, smoothed; Dirichlet components spread in
    sharpness; spikes at the share of rows that look certain. With both rejection kernels
    (``rejection="mixed"``) see :func:`with_kernels`."""
    # From the merged rows, weighted by how many images share each: the same sums as over
    # the images, without (images, classes) float64 temporaries.
    data = prep.data
    k = data.counts.shape[1]
    total = np.asarray(data.counts) + np.asarray(data.unbiased) + 0.5
    soft = total / total.sum(1, keepdims=True)
    weight = np.asarray(data.weight, np.float64)
    groups = np.where(np.asarray(data.probe), k, np.asarray(data.proposals))
    sums = np.stack(
        [np.bincount(groups, weight * soft[:, j], minlength=k + 1) for j in range(k)], axis=1
    )
    sizes = np.bincount(groups, weight, minlength=k + 1)[:, None]
    overall = (weight[:, None] * soft).sum(axis=0) / weight.sum()
    means = np.where(sizes > 0, sums / np.maximum(sizes, 1), overall)
    kinds = np.asarray(component_kinds(config._replace(rejection="proportional")))
    c = len(kinds)
    dtype = jnp.result_type(float)
    mean = np.repeat(means[:, None, :], c, axis=1)
    dirichlet = kinds == 0
    conc = np.full(c, 3.0)
    conc[dirichlet] = np.geomspace(1.0, 20.0, dirichlet.sum()) if dirichlet.sum() > 1 else 3.0
    weights = np.where(dirichlet, 0.6 / dirichlet.sum(), 0.2)
    weights = weights / weights.sum()
    base = Prior(
        jnp.asarray(mean, dtype),
        jnp.asarray(np.tile(conc, (k + 1, 1)), dtype),
        jnp.asarray(np.tile(weights, (k + 1, 1)), dtype),
        tuple(int(x) for x in kinds),
    )
    return with_kernels(base, config)


def with_kernels(base: Prior, config: ModelConfig) -> Prior:
    """``base`` (components of SPA's kernel) laid out for ``config.rejection``: with
    ``"mixed"`` every component twice, :data:`INITIAL_UNIFORM_SHARE` of the weight on the
    uniform kernel's copies."""
    if config.rejection != "mixed":
        return Prior(
            base.mean, base.concentration, base.weights,
            component_kinds(config), component_rejection(config), degree(config),
        )  # fmt: skip
    share = INITIAL_UNIFORM_SHARE
    return Prior(
        jnp.concatenate([base.mean, base.mean], axis=1),
        jnp.concatenate([base.concentration, base.concentration], axis=1),
        jnp.concatenate([base.weights * (1 - share), base.weights * share], axis=1),
        component_kinds(config),
        component_rejection(config),
        degree(config),
    )


def home_device(devices) -> jax.Device:
    """This process's first device among ``devices``: where the optimisation runs and the
    per-image results are assembled."""
    here = jax.process_index()
    return next((d for d in devices if d.process_index == here), jax.local_devices()[0])


@functools.lru_cache(maxsize=32)
def _svi(config: ModelConfig, optimizer) -> SVI:
    """One SVI object per model configuration and optimizer, so that compiled programs
    are reused by later fits in the process."""
    return SVI(spa_model, global_guide, optimizer, QuadratureELBO(), config=config)


def _optimise(
    key, prep: Prepared, config: ModelConfig, init: Prior, devices, settings: dict
) -> tuple[Optimized, tuple | None, float]:
    """Fit the prior and the variational posterior of the globals: on every image, or on
    a random subsample of ``prior_images`` images plus every calibration image. Returns
    the result, delta's exact posterior given the fitted prior and its widening when the
    optimisation computed them (see :func:`_lbfgs_fit`), else ``None`` and 1.

    The optimisation runs on one device of this process: its size is bounded by
    ``prior_images``, a full batch needs no communication there, and the result then does
    not depend on how many devices or processes there are (every process computes the
    same numbers). The per-image summaries that follow are spread over all devices."""
    k_sub, k_opt = jax.random.split(key)
    device = home_device(devices)
    prior_images = settings["prior_images"]
    if prior_images is not None and prep.counts.shape[0] > prior_images:
        data = subsample(prep, prior_images, k_sub)
    else:
        data = prep.data
    scale = float(np.sum(np.asarray(data.weight)))  # tolerances are per image fitted
    optimizer = settings["optimizer"]
    common = dict(max_steps=settings["max_steps"], tolerance=settings["tolerance"], scale=scale)
    if optimizer is None:
        start = moment_start(data, config)
        levels = split_levels(data)
        if len(levels) > 1:  # each level with polynomials of its own length
            config = config._replace(
                level_terms=tuple(
                    polynomial_terms(lev.num_terms - 1, degree(config)) for lev in levels
                )
            )
            data = tuple(pad(lev.data) for lev in levels)
        else:
            data = pad(data)
        config = config._replace(
            count_bounds=tuple(count_bound(d) for d in ((data,) if len(levels) == 1 else data))
        )
        data = jax.device_put(data, device)
        exact = _calibration_data(prep) if exact_draws_apply(config) else None
        work = sum(lev.data.num_rows * lev.num_terms for lev in levels)
        common["options"] = compile_options(work, device.platform)
        return _lbfgs_fit(
            data, config, init, settings["progress"], common, start, exact, settings["widen"]
        )
    data = jax.device_put(pad(data), device)
    svi = _svi(config, optimizer)
    out = run_svi(svi, k_opt, (data,), {"init": init}, progress=settings["progress"], **common)
    return out, None, 1.0


MAX_CUT_ROUNDS = 8
"""With the cut, rounds of L-BFGS with the other images' globals frozen, at most."""

LAST_ROUND_MOVE = 1e-2
"""With the cut, a last round whose globals still move by this much (logit units) means
the rounds did not reach their fixed point: ``fit`` warns and reports
``converged=False``. Below it, and above the move that ends the rounds early (see
:data:`ROUND_MOVE_SD`), the globals are as close as the optimiser's own tolerance makes
them."""

EARLY_ROUND_LOOSENESS = 10.0
"""With the cut, rounds run at this many times the tolerance until the globals move by
less than 0.01 (logit units) in a round; then at the tolerance until they stop moving."""


MOMENT_START_ROWS = 5
"""Calibration rows (biased and unbiased annotations, no probe) from which the optimiser
starts delta at its moment estimate; with fewer it starts at the prior's guess."""


def moment_start(data: SPAData, config: ModelConfig) -> float | None:
    """Where the optimiser starts ``logit(delta / 1*)``: the method-of-moments estimate
    from the calibration rows, whose acceptance rate is ``delta + (1* - delta) p[rho]``
    with ``p[rho]`` estimated by the unbiased share (1* at its fixed value, else 0.95).
    With the cut, the rounds of the fit follow a poor start out by a factor of about three
    per round; starting near the end point saves most of them. ``None`` below
    ``MOMENT_START_ROWS`` usable rows or when the estimate is undefined."""
    counts, unbiased = np.asarray(data.counts), np.asarray(data.unbiased)
    rho, w = np.asarray(data.proposals), np.asarray(data.weight, np.float64)
    n, m = counts.sum(axis=1), unbiased.sum(axis=1)
    use = (n > 0) & (m > 0) & ~np.asarray(data.probe) & (w > 0)
    if use.sum() < MOMENT_START_ROWS:
        return None
    rows = np.flatnonzero(use)
    acc = counts[rows, rho[rows]] / n[rows]
    share = unbiased[rows, rho[rows]] / m[rows]
    star = 0.95 if config.one_star is None else float(config.one_star)
    off = np.sum(w[rows] * (1 - share))
    if off <= 0:
        return None
    delta = (np.sum(w[rows] * acc) - star * np.sum(w[rows] * share)) / off
    frac = float(np.clip(delta / star, 0.02, 0.95))
    return math.log(frac / (1 - frac))


ROUND_MOVE_SD = 0.02
"""With the cut, the rounds end once the globals move by less than this fraction of their
own posterior sd in a round (logit units; or by less than 1e-3, delta by 0.00025): the
rest of the way to the fixed point is a small fraction of what the data leave uncertain,
and each round's optimiser stops at its tolerance anyway."""


def _settled(params: dict) -> float:
    """How little the globals must move in a round for the rounds to end."""
    scales = [np.min(np.asarray(v)) for k, v in params.items() if k.endswith("_scale")]
    return float(max(1e-3, ROUND_MOVE_SD * min(scales, default=0.0)))


def _calibration_data(prep: Prepared) -> SPAData | None:
    """The rows that inform delta under the cut, padded; ``None`` when there are none."""
    rows = calibrated_rows(prep.data)
    return pad(restrict(prep.data, rows)) if rows.size else None


def cut_grid(
    calibration: SPAData, prior: Prior, config: ModelConfig, widening: float = 1.0
) -> tuple:
    """``(grid, log_post)``: delta's exact posterior given ``prior`` and the calibration
    rows ``calibration`` (padded; see :func:`exact_draws_apply` and
    :func:`cleverjax.bayes.exact.grid_posterior`), its likelihood tempered by
    ``1 / widening**2`` (see :func:`feedback_widening`)."""
    # The calibration rows' own polynomial length: a few long rows elsewhere in the data
    # would otherwise make every grid point pay for their terms.
    most = int(np.max(np.asarray(calibration.table.n), initial=0))
    return grid_posterior(
        calibration,
        prior,
        float(config.one_star),
        config.delta_prior,
        num_terms=polynomial_terms(most, degree(config)),
        num_points=EXACT_GRID_POINTS,
        temper=1.0 / widening**2,
    )


MAX_FEEDBACK_SLOPE = 0.9
"""The slope of the cut's round map that :func:`feedback_widening` takes at most (a
widening of 10); at 1 the rounds would have no fixed point."""

FEEDBACK_STEP_SD = 2.0
"""How far :func:`feedback_widening` moves delta (in posterior sds of ``logit(delta /
1*)``): far enough that the response stands well above the rounds' own tolerance."""


def feedback_widening(
    params: dict, data, config: ModelConfig, live, exact: SPAData, common: dict
) -> tuple[float, float]:
    """``(widening, slope)``: how much the prior's response to delta amplifies the
    calibration images' evidence about delta, under the cut.

    With the cut the prior is fitted to every image at the current delta, and delta to
    the calibration images given that prior: the fit is the fixed point of the map
    ``T`` from one round's delta to the next (:func:`_lbfgs_fit`). Where the images'
    label distributions are diffuse, a larger delta makes the fitted prior expect less
    acceptance on its own (smaller ``p[rho]``), which in turn asks more of delta: any
    error of the calibration images' evidence returns amplified by ``1 / (1 - T')``, and
    the posterior given the fitted prior (which holds the prior still) is that much too
    narrow. ``T'`` comes from one more round with delta moved by
    :data:`FEEDBACK_STEP_SD` of its sd (logit scale); the widening is
    ``1 / (1 - T')``, at least 1 (a prior that leans against delta is not taken to
    sharpen it) and at most 10 (:data:`MAX_FEEDBACK_SLOPE`). Measured on simulated
    campaigns (benchmarks/RESULTS.md): about 1.16 on the Treeversity#6 preset, whose
    intervals it brings to their nominal coverage, 1.00-1.02 on CIFAR-10H and Plankton,
    1.2-1.5 on diverse data (Dirichlet(0.2) label distributions over 10 classes; at
    N = 3 there the intervals stay somewhat narrow).
    """
    loc = np.asarray(params["delta_fraction_loc"])
    x0 = float(loc.reshape(-1)[0])
    step = FEEDBACK_STEP_SD * float(np.asarray(params["delta_fraction_scale"]).reshape(-1)[0])
    if not step > 0:
        return 1.0, 0.0
    moved = {**params, "delta_fraction_loc": np.full(loc.shape, x0 + step, loc.dtype)}
    _, after, _, _ = _cut_round(moved, data, config, live, exact, common)
    x1 = float(np.asarray(after["delta_fraction_loc"]).reshape(-1)[0])
    slope = (x1 - x0) / step
    return widening_from_slope(slope), slope


def widening_from_slope(slope: float) -> float:
    """``1 / (1 - slope)`` for the slope of the cut's round map (see
    :func:`feedback_widening`), the slope taken within ``[0, MAX_FEEDBACK_SLOPE]``; 1 with
    a warning when the slope is not finite."""
    if not math.isfinite(slope):
        warnings.warn(
            "the round that measures the prior's response to delta ended at a non-finite "
            "delta; delta's interval is not widened for it (delta_widening = 1)",
            ConvergenceWarning,
            stacklevel=6,
        )
        return 1.0
    return 1.0 / (1.0 - float(np.clip(slope, 0.0, MAX_FEEDBACK_SLOPE)))


def _cut_round(params: dict, data, config: ModelConfig, live, exact, options: dict) -> tuple:
    """One round of :func:`_lbfgs_fit`: L-BFGS (``options``: :func:`run_lbfgs`'s keywords)
    with the globals of the images that are not calibration data frozen at ``params``'s;
    then, with ``exact`` (the calibration rows), delta's guide set to its exact posterior
    given the round's prior. Returns ``(optimiser output, parameters after the round,
    frozen globals, that posterior or None)``."""
    where = jax.tree.leaves(data)[0].sharding
    frozen = jax.device_put(global_params(params, config), where)
    args = (data, freeze(frozen, data, config, live))
    out = run_lbfgs(negative_elbo, params, param_constraints, args, config, **options)
    after, grid = dict(out.params), None
    if exact is not None:
        grid = cut_grid(exact, prior_from_params(after, config), config)
        after.update(exact_globals(*grid, after, config))
    return out, after, frozen, grid


def exact_globals(grid, log_post, params: dict, config: ModelConfig) -> dict:
    """Delta's guide matched to delta's exact posterior ``(grid, log_post)`` (see
    :func:`cut_grid`): the mean and sd of ``logit(delta / 1*)`` there."""
    star = float(config.one_star)
    w = _grid_weights(np.asarray(log_post, np.float64))
    frac = np.clip(np.asarray(grid, np.float64) / star, 1e-12, 1 - 1e-12)
    x = np.log(frac) - np.log1p(-frac)
    mean = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mean) ** 2)))
    loc, scale = params["delta_fraction_loc"], params["delta_fraction_scale"]
    return {
        "delta_fraction_loc": np.full(np.shape(loc), mean, np.asarray(loc).dtype),
        "delta_fraction_scale": np.full(np.shape(scale), sd, np.asarray(scale).dtype),
    }


def _lbfgs_fit(
    data,
    config: ModelConfig,
    init: Prior,
    progress: bool,
    common: dict,
    start: float | None,
    exact: SPAData | None = None,
    widen: bool = True,
) -> tuple[Optimized, tuple | None, float]:
    """L-BFGS on :func:`negative_elbo`. With the cut, in rounds: the images that are not
    calibration data see the globals frozen at the previous round's, until the globals
    stop moving (a fixed point, where the loss and its gradient are the cut's). Each round
    resumes the previous one's curvature memory.

    ``exact``: the calibration rows, when delta's exact posterior given the prior is
    available (:func:`exact_draws_apply`). After each round, delta's guide is then set to
    that posterior's moments (:func:`exact_globals`) instead of the optimiser's values:
    delta's direction of the loss is so flat that the optimiser's tolerance on the whole
    loss leaves its location uncertain by a fair part of its sd, and the rounds would
    wander by that much. The last round's posterior (given the fitted prior), widened
    for the prior's response to delta (:func:`feedback_widening`), is returned with the
    result and the widening, for the draws of delta; ``None`` and 1 without ``exact``
    (and the widening 1, not measured, with ``widen`` false: draws not from the grid)."""
    params = initial_params(config, init)
    if start is not None:
        loc = params["delta_fraction_loc"]
        params["delta_fraction_loc"] = np.full(loc.shape, start, loc.dtype)
    losses, steps, seconds, state = [], 0, 0.0, None
    where = jax.tree.leaves(data)[0].sharding
    cut = config.delta_from == "calibration"
    loose = cut and EARLY_ROUND_LOOSENESS > 1
    live = None
    if cut:  # the calibration entries' pairs: computed once
        levels = (data,) if isinstance(data, SPAData) else data
        live = jax.device_put(tuple(live_pairs(d.table, config.num_classes) for d in levels), where)
    for _ in range(MAX_CUT_ROUNDS if cut else 1):
        # While the globals still move, a round need not polish what the next one changes.
        tolerance = common["tolerance"] * (EARLY_ROUND_LOOSENESS if loose else 1)
        options = {**common, "tolerance": tolerance, "resume": state, "progress": progress}
        out, params, frozen, grid = _cut_round(params, data, config, live, exact, options)
        losses.append(out.losses)
        steps, seconds = steps + len(out.losses), seconds + out.step_seconds * len(out.losses)
        state = out.state
        moved = max(
            np.max(np.abs(np.asarray(params[k]) - np.asarray(v))) for k, v in frozen.items()
        )
        if moved < _settled(params) and not loose:
            break
        loose = loose and moved >= 1e-2
    else:
        if cut and moved >= LAST_ROUND_MOVE:
            warnings.warn(
                f"with the cut, {MAX_CUT_ROUNDS} rounds of L-BFGS ended with the global "
                f"parameters still moving by {moved:.3g} (logit units) in the last round, "
                f"so the fit is not at its fixed point; delta_from='all' needs no rounds",
                ConvergenceWarning,
                stacklevel=4,
            )
            out = out._replace(converged=False)
    widening = 1.0
    if exact is not None and widen:
        widening, _ = feedback_widening(
            params, data, config, live, exact, {**common, "resume": state}
        )
        if widening > 1:
            grid = cut_grid(exact, prior_from_params(params, config), config, widening)
    out = out._replace(
        params=params, losses=np.concatenate(losses), step_seconds=seconds / max(steps, 1)
    )
    return out, grid, widening


@functools.partial(jax.jit, static_argnums=(2, 3))
def _global_draws(key, params, num_draws: int, config: ModelConfig):
    """Draws of (delta, 1*) from the fitted :func:`global_guide` (one compiled program: a
    handful of small operations run one by one cost more than they compute)."""
    draws = {}
    for i, (site, _) in enumerate(_global_sites(config)):
        loc, scale = (jnp.expand_dims(params[f"{site}_{x}"], 0) for x in ("loc", "scale"))
        shape = (num_draws, *loc.shape[1:])
        eps = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.result_type(float))
        draws[site] = jax.nn.sigmoid(loc + scale * eps)
    if config.one_star is None:
        one_star = draws["one_star"]
    else:
        one_star = jnp.full((num_draws,), config.one_star, jnp.result_type(float))
    # With one delta per class: (draws, classes), each class's delta under the same 1*;
    # with delta by difficulty: (draws, 2), its ends at t = 0 and t = 1.
    frac = draws["delta_fraction"]
    if config.delta_by_difficulty:
        frac = jnp.stack([frac, draws["delta_easy_fraction"]], axis=1)
    return one_star.reshape(-1, *([1] * (frac.ndim - 1))) * frac, one_star


def exact_draws_apply(config: ModelConfig) -> bool:
    """Whether :func:`fit` draws delta from its exact posterior given the fitted prior:
    with the cut (only the calibration rows inform delta, a few hundred at most), 1*
    fixed and one delta for all images."""
    return (
        config.delta_from == "calibration"
        and config.one_star is not None
        and not (config.delta_by_class or config.delta_by_difficulty)
    )


def _exact_draws(key, prep: Prepared, prior: Prior, config: ModelConfig, num: int, grid=None):
    """``num`` draws of delta from its exact posterior given ``prior`` and the calibration
    rows (grid quadrature, see :func:`cut_grid`; ``grid``: that posterior, when the
    optimisation computed it for the same prior), with 1*."""
    if grid is None:
        grid = cut_grid(_calibration_data(prep), prior, config)
    grid, log_post = grid
    dtype = jnp.result_type(float)
    deltas = jnp.asarray(draws_from_grid(key, grid, log_post, num), dtype)
    return deltas, jnp.full((num,), config.one_star, dtype)


EXACT_GRID_POINTS = 128
"""Gauss-Legendre points per stage of the grid posterior of delta in :func:`fit` (the
second stage spans the posterior's mass: a fraction of its sd apart)."""


def _prior_draws(key, config: ModelConfig, num: int = 4000):
    """Draws of (delta, 1*) from their prior: what the data say when delta is unidentified."""
    a, b = config.delta_prior
    dtype = jnp.result_type(float)
    shape = (num, config.num_classes) if config.delta_by_class else (num,)
    if config.delta_by_difficulty:
        shape = (num, 2)
    deltas = jax.random.beta(key, a, b, shape, dtype=dtype)
    star = config.one_star if config.one_star is not None else 0.99
    return deltas * star, jnp.full((num,), star, dtype)


def _nuts_draws(key, prep: Prepared, params, config: ModelConfig, init: Prior, settings):
    """NUTS on the globals with the learned prior held fixed. With the cut
    (``delta_from="calibration"``) the target is the cut posterior itself: the model is
    run on the calibration rows alone, which are all that inform delta under the cut."""
    data = prep.data
    if config.delta_from == "calibration":
        data = data.take(host_array(np.flatnonzero(np.asarray(calibrated(data))), np.int32))
    nuts_model = numpyro.handlers.substitute(
        spa_model, data={k: v for k, v in params.items() if k.startswith("prior_")}
    )
    num = settings["num_samples"]
    mcmc = MCMC(NUTS(nuts_model), num_warmup=num, num_samples=num, progress_bar=False)
    with lenient_promotion():
        mcmc.run(
            key, data, config=config._replace(subsample_size=None, delta_from="all"), init=init
        )
    samples = mcmc.get_samples()
    if config.one_star is None:
        stars = samples["one_star"]
    else:
        stars = jnp.full_like(samples["delta_fraction"], config.one_star)
    return stars * samples["delta_fraction"], stars


def _summarise(key, prep: Prepared, prior, deltas, stars, level, per_delta, devs) -> tuple:
    """:func:`summaries` of every row of ``prep.data`` (in its order, followed by padding
    rows: callers index the real rows, and a slice to the data's own row count would
    compile a program for every data size). Rows of every level (see
    :func:`split_levels`) go through one program; each level's entries have polynomials
    of their own length, so rows with few annotations do not pay for the terms of rows
    with many."""
    levels = split_levels(prep.data)
    # The globals come from one device; every device gets its own copy.
    k, prior_d, deltas_d, stars_d = replicate_on(
        devs, (jax.random.key_data(key), prior, deltas, stars)
    )
    work = sum(lev.data.num_rows * lev.num_terms for lev in levels)
    options = compile_options(work, devs[0].platform)
    out = stored_call(
        summaries_program(options),
        k,
        shard_rows(pad_levels(prep.data, levels, len(devs)), devs),
        prior_d,
        deltas_d,
        stars_d,
        num_terms=tuple(polynomial_terms(lev.num_terms - 1, prior.degree) for lev in levels),
        level=level,
        per_delta=per_delta,
        devices=devs,
        key_impl=str(jax.random.key_impl(key)),
        name="summaries",
        options=options,
    )
    return local_arrays(tuple(out))  # several processes: gathered


def _intervals(draws, level: float) -> np.ndarray:
    """``(columns, 2)`` equal-tailed ``level`` intervals of ``(draws, columns)`` draws
    (computed in float64)."""
    tail = (1 - level) / 2
    return np.quantile(np.asarray(draws, np.float64), [tail, 1 - tail], axis=0).T


def _interval(draws: Array, level: float) -> tuple[float, float]:
    """The interval of ``(draws,)`` draws of one quantity, as Python floats."""
    lo, hi = _intervals(np.asarray(draws)[:, None], level)[0]
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def fit(
    key: PRNGKeyArray,
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    unbiased_counts: ArrayIn | None = None,
    probe: ArrayIn | None = None,
    one_star: float | None = 0.99,
    delta_prior: tuple[float, float] = DEFAULT_DELTA_PRIOR,
    num_components: int = 2,
    spikes: bool = True,
    prior_shrinkage: float | None = None,
    delta_from: Literal["calibration", "all"] = "calibration",
    rejection: Literal["proportional", "uniform", "mixed"] = "proportional",
    delta_by_class: bool = False,
    delta_by_difficulty: bool = False,
    method: Literal["svi", "nuts"] = "svi",
    exact_delta: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    max_steps: int | None = None,
    tolerance: float | None = None,
    subsample_size: int | None = None,
    prior_images: int | None = 50_000,
    level: float = 0.9,
    num_draws: int = 16,
    num_interval_draws: int = 200,
    num_ppc_replicates: int = 50,
    check_model: bool = True,
    num_samples: int = 1000,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> FitResult:
    """Infer delta, 1* and every image's label distribution from proposal-biased counts.

    The model (see :func:`cleverjax.spa_model`) puts a class-conditional Dirichlet-mixture
    prior on each image's label distribution, learned from all images (empirical Bayes),
    and integrates every distribution out exactly. The global parameters are fitted by
    maximising a deterministic ELBO (Gauss-Hermite quadrature over delta) with L-BFGS.
    With the default cut and 1* fixed, delta's draws then come from its exact posterior
    given the fitted prior (quadrature on a grid over the calibration images), not from
    the variational guide, whose width the optimiser's stopping rule does not pin down.
    The repaired labels are exact posterior means given the globals, averaged over the
    posterior of delta. BC is this model's likelihood inversion at a point estimate; CB
    its posterior mean under a prior centred on the class-blending matrix.

    Args:
        key: PRNG key.
        counts: ``(images, classes)`` counts of annotations made with the proposal.
        proposals: ``(images,)`` proposed classes.
        unbiased_counts: keyword-only; ``(images, classes)`` counts of annotations made
            without a proposal (zero rows where there are none): calibration data.
        probe: keyword-only; ``(images,)`` bool, the image's proposal was drawn uniformly
            at random (a probe), which identifies delta without unbiased annotations.
        one_star: keyword-only; fixed 1* (paper: 0.99), or ``None`` to learn it.
        delta_prior: keyword-only; Beta(a, b) prior of ``delta / 1*`` (default Jeffreys'
            Beta(0.5, 0.5), see :data:`cleverjax.bayes.model.DEFAULT_DELTA_PRIOR`).
        num_components: keyword-only; Dirichlet components per prior row.
        spikes: keyword-only; add components with ``p[proposal]`` exactly 0 and exactly 1
            (classes nobody chose, unanimous images).
        prior_shrinkage: keyword-only; pseudo-annotations of a hyperprior that pulls each
            prior component's shape over the classes other than its proposal toward the
            average label of the images proposed as that class
            (:func:`cleverjax.bayes.model.shrinkage_log_density`). ``None`` (default):
            one per class other than the proposal (K - 1), which matters where a class
            has few images next to the classes (at K = 100 the labels' KL fell from 1.68
            to 0.79 with 2000 images, see benchmarks/RESULTS.md) and is negligible where
            it has hundreds; 0: no shrinkage.
        delta_from: keyword-only; which images inform delta and 1*. ``"calibration"``
            (default): only calibration images (unbiased annotations) and probes, a cut
            posterior that no misspecification of the prior on the other images can make
            confidently wrong. ``"all"``: every image, through the learned prior
            (sharper; as right as the prior family).
        rejection: keyword-only; which class a rejected proposal's annotation picks:
            ``"proportional"`` to ``p`` among the other classes (SPA, default),
            ``"uniform"`` among them, or ``"mixed"``: a per-image mixture of the two whose
            share is learned with the prior. Every variant is exact.
            :func:`cleverjax.compare_models` chooses among SPA and its variants by
            cross-validated prediction of the calibration images.
        delta_by_class: keyword-only; one delta per proposed class (annotators who
            accept some classes' proposals more readily), under a hierarchical prior that
            shrinks them toward each other: ``logit(delta_g / 1*) ~ Normal(mu, tau)`` with
            ``mu`` and ``tau`` learned. ``delta`` is then the images' average delta and
            ``delta_by_class`` holds each class's. Needs the default L-BFGS fit
            (``optimizer=None``, ``method="svi"``); the model checks, which test SPA's
            single delta, are not run.
        delta_by_difficulty: keyword-only; delta depends on the image's difficulty,
            linearly in ``t = p[proposal]``: ``delta(t) = hard (1 - t) + easy t``
            (annotators who lean on the proposal more, or less, when the image is hard),
            each end with the prior ``delta_prior``. The likelihood stays exact: each
            image's polynomial in ``t`` has degree 2N instead of N. ``delta`` is then the
            images' average delta (at their posterior mean ``p[proposal]``) and
            ``delta_by_difficulty`` holds ``(hard, easy)``. The slope leans on the
            learned prior of ``p[proposal]`` more than SPA's delta does: where that prior
            family fits poorly (argmax proposals on diverse data, see
            benchmarks/RESULTS.md) the two ends can differ under SPA annotators, so choose
            the variant with :func:`cleverjax.compare_models`. Needs the default L-BFGS
            fit; not with ``delta_by_class``; the model checks of SPA are not run.
        method: keyword-only; ``"svi"``, or ``"nuts"`` (the prior from the optimiser, then
            NUTS on the globals; with the cut, NUTS samples the cut posterior itself).
        exact_delta: keyword-only; with ``method="svi"``, the cut, 1* fixed and one delta
            (the defaults), draw delta from its exact posterior given the fitted prior
            (grid quadrature over the calibration images; ``delta_draws`` is
            ``"exact"``), widened with the default L-BFGS fit by as much as the prior's
            response to delta amplifies the calibration images' evidence
            (``delta_widening``, see :func:`cleverjax.bayes.fitting.feedback_widening`).
            ``False``: from the variational guide, as in the other settings.
        optimizer: keyword-only; ``None`` (default): full-batch L-BFGS on the
            deterministic objective, tens of iterations. An optax transformation (e.g.
            :func:`cleverjax.default_adam`): first-order SVI steps with it instead, as in
            NumPyro's ``SVI``; needed with ``subsample_size``.
        max_steps: keyword-only; optimiser step limit: evaluations of the objective per
            L-BFGS round (default 500), or first-order steps (default 20000). With the
            cut, L-BFGS runs in rounds (see :func:`cleverjax.bayes.model.negative_elbo`),
            at most :data:`MAX_CUT_ROUNDS`.
        tolerance: keyword-only; convergence: the objective improved by less than this
            many nats per image over the last 10 L-BFGS evaluations (default 1e-6: the
            width of delta's interval moves the objective by hundredths of a nat), or
            over the last window of 250 first-order steps (default 1e-4, or less than
            twice its noise).
        subsample_size: keyword-only; distinct rows per first-order SVI step (only with
            an optax ``optimizer``; default all).
        prior_images: keyword-only; the prior (a few hundred parameters) is fitted on at
            most this many images: every calibration image and a uniform random sample of
            the others. Every image is then summarised exactly. With
            ``delta_from="all"`` delta is learned from those images too (its interval is
            that of a data set of this size, not narrower). ``None``: always use every
            image.
        level: keyword-only; credible level of the intervals.
        num_draws: keyword-only; draws of the globals the posterior mean averages over.
        num_interval_draws: keyword-only; posterior draws per image for the intervals,
            rounded up to a multiple of ``num_draws``; 0: no per-image intervals
            (``lower`` and ``upper`` are ``None``), the faster path when only the
            repaired labels and delta are wanted.
        num_ppc_replicates: keyword-only; replicated acceptance rates drawn for the
            predictive check (0 to skip the check). The check itself uses every image's
            exact predictive moments (see :class:`cleverjax.PosteriorPredictive`).
        check_model: keyword-only; run the model checks of SPA on the calibration
            images (:func:`cleverjax.model_checks`: what rejections choose, acceptance
            against difficulty) and warn when one fails. The check of the share on the
            proposal, which tests the prior family as much as SPA, is not run here: call
            ``cleverjax.model_checks(..., prior=result.prior)`` for it.
        num_samples: keyword-only; NUTS samples (and warm-up) with ``method="nuts"``.
        devices: keyword-only; devices to spread the images over, data parallel (default:
            all local devices; with several processes, the devices of all processes: every
            process calls :func:`fit` with the same inputs, which may be global arrays,
            and gets the whole result).
        progress: keyword-only; show a progress bar.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: on mismatched shapes, negative or non-integer counts, images without
            any annotation, priors outside their support, or invalid options.
        FloatingPointError: if the optimiser diverges (a NaN or infinite loss).

    Warns:
        IdentifiabilityWarning: too little calibration information for delta.
        ConvergenceWarning: the optimiser stopped at ``max_steps``, or with the cut its
            rounds ended short of their fixed point (``converged`` is false).
        ModelCheckWarning: a model check failed (the warning names it).

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=1000)
        >>> rho = cj.propose(jax.random.key(1), p, accuracy=0.9)
        >>> biased = cj.simulate_counts(jax.random.key(2), p, rho, num_annotations=10, delta=0.3)
        >>> cal = cj.calibration_sample(jax.random.key(3), p)
        >>> unbiased = jax.numpy.zeros_like(biased).at[cal.indices].set(cal.counts)
        >>> res = cj.fit(jax.random.key(4), biased, rho, unbiased_counts=unbiased,
        ...              num_ppc_replicates=0)
        >>> res.posterior_mean.shape, res.delta_interval[0] < res.delta < res.delta_interval[1]
        ((1000, 3), True)
    """
    start = time.perf_counter()
    kd = as_typed_key(key)
    prep = prepare(counts, proposals, unbiased_counts, probe)
    a, b = _checks.beta_pair("delta_prior", delta_prior)
    _checks.check_choice("method", method, ("svi", "nuts"))
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    _checks.check_choice("rejection", rejection, REJECTION_KERNELS)
    for name, on in (
        ("delta_by_class", delta_by_class),
        ("delta_by_difficulty", delta_by_difficulty),
    ):
        if on and (optimizer is not None or method != "svi"):
            raise ValueError(
                f"`{name}=True` needs the default L-BFGS fit (optimizer=None, method='svi')"
            )
    if delta_by_class and delta_by_difficulty:
        raise ValueError(
            "`delta_by_class` and `delta_by_difficulty` cannot be combined; choose one "
            "(cleverjax.compare_models compares them)"
        )
    if prior_shrinkage is not None and not (
        isinstance(prior_shrinkage, (int, float))
        and not isinstance(prior_shrinkage, bool)
        and math.isfinite(prior_shrinkage)
        and prior_shrinkage >= 0
    ):
        raise ValueError(
            f"`prior_shrinkage` must be a non-negative number or None; got {prior_shrinkage!r}"
        )
    if one_star is not None and not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1] or be None (learned); got {one_star}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1); got {level}")
    first_order = optimizer is not None
    if max_steps is None:
        max_steps = 20000 if first_order else 500
    if tolerance is None:
        tolerance = 1e-4 if first_order else 1e-6
    _checks.non_negative_int("num_interval_draws", num_interval_draws)
    _checks.non_negative_int("num_ppc_replicates", num_ppc_replicates)
    _check_positive_ints(
        num_components=num_components,
        max_steps=max_steps,
        num_draws=num_draws,
        num_samples=num_samples,
        **({} if prior_images is None else {"prior_images": prior_images}),
    )
    if subsample_size is not None and not first_order:
        raise ValueError(
            "`subsample_size` needs a first-order `optimizer` (e.g. cleverjax.default_adam()): "
            "L-BFGS takes full batches"
        )
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"`tolerance` must be a positive number; got {tolerance!r}")
    if devices is None:
        devices = jax.devices() if jax.process_count() > 1 else jax.local_devices()
    devs = tuple(devices)
    if not devs:
        raise ValueError("`devices` must name at least one device; got an empty sequence")
    release_compiled_programs()  # a long loop of fits over many shapes would exhaust maps
    config = ModelConfig(
        num_classes=prep.counts.shape[1],
        num_components=int(num_components),
        num_terms=prep.num_terms,
        delta_prior=(a, b),
        one_star=one_star,
        subsample_size=subsample_size,
        delta_from=delta_from,
        spikes=bool(spikes),
        rejection=rejection,
        delta_by_class=bool(delta_by_class),
        delta_by_difficulty=bool(delta_by_difficulty),
        shrinkage=float(prep.counts.shape[1] - 1 if prior_shrinkage is None else prior_shrinkage),
    )
    config = config._replace(num_terms=polynomial_terms(prep.num_terms - 1, degree(config)))
    identified, cal_images, cal_annotations = _identification(prep)
    if not identified:
        _warn_identification(cal_images, cal_annotations)
    settings = dict(
        optimizer=optimizer,
        max_steps=int(max_steps),
        tolerance=float(tolerance),
        prior_images=prior_images,
        progress=progress,
        num_samples=int(num_samples),
        widen=bool(exact_delta) and method == "svi",  # only the exact draws use it
    )
    k_opt, k_draw, k_int, k_ppc, k_mcmc, k_chk = jax.random.split(kd, 6)
    init = initial_prior(prep, config)
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    prepare_s = clock[0] - start

    # 1. The prior and the variational posterior of the globals.
    opt, grid, widening = _optimise(k_opt, prep, config, init, devs, settings)
    prior = jax.block_until_ready(prior_from_params(opt.params, config))
    optimise_s = lap()

    # 2. Draws of the globals.
    if cal_images == 0:
        all_deltas, all_stars = _prior_draws(k_draw, config)
        delta_draws = "prior"
    elif method == "nuts":
        all_deltas, all_stars = _nuts_draws(k_mcmc, prep, opt.params, config, init, settings)
        delta_draws = "nuts"
    elif exact_delta and exact_draws_apply(config):
        all_deltas, all_stars = _exact_draws(k_draw, prep, prior, config, 4000, grid)
        delta_draws = "exact"
    else:
        delta_draws = "variational"
        glob = {k: opt.params[k] for k in global_params(opt.params, config)}
        all_deltas, all_stars = _global_draws(k_draw, glob, 4000, config)
    # With one delta per class, draws are ordered by the images' average delta; with
    # delta by difficulty, by the average of its two ends.
    per_class = np.asarray(all_deltas) if delta_by_class else None
    ends = np.asarray(all_deltas) if delta_by_difficulty else None
    if delta_by_class:
        shares = np.bincount(prep.proposals, minlength=config.num_classes) / len(prep.proposals)
        all_deltas = jnp.asarray(per_class @ shares, per_class.dtype)
    if delta_by_difficulty:
        all_deltas = jnp.asarray(ends.mean(axis=1))
    pick = stratified_index(all_deltas, int(num_draws))
    chosen = np.asarray(all_deltas)[pick]
    if per_class is not None:
        chosen = per_class[pick]
    deltas, stars = jnp.asarray(chosen), jnp.asarray(np.asarray(all_stars)[pick])
    if ends is not None:
        deltas = DifficultyDelta(*jnp.asarray(ends[pick]).T)
    draws_s = lap()

    # 3. Every image's posterior.
    per_delta = -(-int(num_interval_draws) // int(num_draws))
    out = _summarise(k_int, prep, prior, deltas, stars, float(level), per_delta, devs)
    # Per image on one device: the rows' results come back replicated on every device,
    # and a gather there would hold every (images, classes) output once per device.
    # A clipped take: plain indexing first wraps negative indices, which at 10^7 images
    # holds another 0.4 GB of temporaries.
    home = home_device(devs)
    rows = jax.device_put(prep.inverse.astype(np.int32), home)
    mean, lower, upper = (
        None if x is None else jnp.take(jax.device_put(x, home), rows, axis=0, mode="clip")
        for x in out[:3]
    )
    posterior_mean = jax.block_until_ready(mean)
    if ends is not None:  # the images' average delta, at their posterior mean p[rho]
        t_bar = _mean_on_proposal(prep, np.asarray(out[0]))
        all_deltas = jnp.asarray(ends @ np.array([1 - t_bar, t_bar]), ends.dtype)
    summaries_s = lap()

    # 4. The predictive check, from the rows' exact predictive moments.
    check = None
    if num_ppc_replicates:
        num_rows = prep.data.num_rows
        counts = np.asarray(prep.data.counts)
        rho = np.asarray(prep.data.proposals)
        check = acceptance_check(
            k_ppc,
            rho,
            counts[np.arange(num_rows), rho],
            counts.sum(axis=1),
            np.asarray(prep.data.weight),
            np.asarray(out[3])[:num_rows],
            np.asarray(out[4])[:num_rows],
            num_classes=counts.shape[1],
            num_replicates=int(num_ppc_replicates),
        )
    checks: tuple[ModelCheck, ...] = ()
    if check_model and cal_images > 0 and not (delta_by_class or delta_by_difficulty):
        # Checks 1 and 2 read the calibration images alone: pass only those (the same
        # result, without copies of every image's counts).
        cal = np.flatnonzero((prep.counts.sum(axis=1) > 0) & (prep.unbiased.sum(axis=1) > 0))
        if cal.size == 0:  # probes only: one image, so that each check says why it skips
            cal = np.arange(1)
        checks = model_checks(
            k_chk,
            prep.counts[cal],
            prep.proposals[cal],
            prep.unbiased[cal],
            deltas=np.asarray(all_deltas),
            one_stars=np.asarray(all_stars),
        )[:2]
        warn_failed(checks)
    check_s = lap()
    return FitResult(
        delta=float(np.mean(np.asarray(all_deltas))),
        delta_interval=_interval(all_deltas, level),
        one_star=float(np.mean(np.asarray(all_stars))),
        one_star_interval=_interval(all_stars, level),
        posterior_mean=posterior_mean,
        lower=lower,
        upper=upper,
        level=float(level),
        losses=host_array(opt.losses),
        converged=opt.converged,
        identified=identified,
        delta_samples=all_deltas,
        prior=prior,
        params=dict(opt.params),
        ppc=check,
        checks=checks,
        method=method,
        seconds=time.perf_counter() - start,
        step_seconds=opt.step_seconds,
        stage_seconds=StageSeconds(prepare_s, optimise_s, draws_s, summaries_s, check_s),
        one_star_samples=all_stars,
        rejection=rejection,
        uniform_share=_uniform_share(prep, prior),
        delta_by_class=None if per_class is None else per_class.mean(axis=0),
        delta_by_class_interval=None if per_class is None else _intervals(per_class, level),
        delta_by_class_samples=per_class,
        delta_by_difficulty=None if ends is None else ends.mean(axis=0),
        delta_by_difficulty_interval=None if ends is None else _intervals(ends, level),
        delta_by_difficulty_samples=ends,
        delta_draws=delta_draws,
        delta_widening=widening if delta_draws == "exact" else 1.0,
    )


def _mean_on_proposal(prep: Prepared, row_means: np.ndarray) -> float:
    """The images' average posterior mean of ``p[proposal]``, from the rows' means."""
    data = prep.data
    rows = data.num_rows
    on_rho = row_means[np.arange(rows), np.asarray(data.proposals)]
    weight = np.asarray(data.weight, np.float64)
    return float(np.sum(weight * on_rho) / weight.sum())


def _uniform_share(prep: Prepared, prior: Prior) -> float:
    """The prior weight of the uniform-rejection components, averaged over the images'
    prior rows."""
    k = prep.counts.shape[1]
    groups = np.bincount(np.where(prep.probe, k, prep.proposals), minlength=k + 1)
    uniform = uniform_components(prior)
    share = np.asarray(prior.weights)[:, uniform].sum(axis=1)
    return float(np.sum(groups * share) / max(groups.sum(), 1))
